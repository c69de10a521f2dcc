"""`gristmill doctor`: check settings, engines, the Prefect API and Chroma; say what to fix."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.settings import Settings

Echo = Callable[[str], None]


def run_checks(settings: Settings, *, echo: Echo) -> list[str]:
    """Print every check's verdict; return the problems (empty when all is well)."""
    problems: list[str] = []

    def check(name: str, ok: bool, detail: str, fix: str = "") -> None:
        echo(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
        if not ok:
            problems.append(f"{name}: {fix or detail}")
            if fix:
                echo(f"       fix: {fix}")

    echo("Settings (GRISTMILL_* environment variables and .env; secrets masked):")
    for key, value in settings.masked().items():
        echo(f"  {key} = {value}")
    echo("")

    engine = settings.llm_engine
    if engine == "offline":
        check("LLM engine", True, "offline-extractive (set OPENAI_API_KEY to use a real LLM)")
    else:
        check(*_check_openai(settings))

    if settings.embedding_engine == "local":
        from tasks.embeddings import LocalOnnxEmbedder
        from tasks.errors import ConfigurationError

        model_dir = settings.embedding_model_dir
        try:
            # fills an incomplete folder from the installed packages, as a run would
            LocalOnnxEmbedder(model_dir).check_files()
            check("local embedder", True, f"model files in {model_dir}")
        except ConfigurationError as exc:
            check("local embedder", False, exc.message, exc.hint or "")
    try:
        from tasks.tokens import count_tokens

        check("token counter", count_tokens("hello world") == 2, "cl100k_base (offline)")
    except Exception as exc:
        check("token counter", False, str(exc), "reinstall with `make setup`")

    check(*_check_pins())
    check(*_check_prefect(settings))
    url = os.environ.get("PREFECT_API_URL") or _local_api_url(settings)
    if url and not any(p.startswith("Prefect API") for p in problems):
        check(*_check_scheduler(url))
    check(*_check_chroma(settings))
    for folder in (settings.data_dir, settings.transcripts_dir):
        check(
            f"folder {folder}",
            folder.is_dir(),
            "exists" if folder.is_dir() else "missing",
            "create it or set GRISTMILL_DATA_DIR",
        )
    echo("")
    echo("All checks passed." if not problems else f"{len(problems)} problem(s) to fix.")
    return problems


def _check_openai(settings: Settings) -> tuple[str, bool, str, str]:
    from tasks.llm import OpenAILLM
    from tasks.redaction import redact

    try:
        llm = OpenAILLM.from_settings(settings)
        models = llm.client.with_options(timeout=5, max_retries=0).models.list()
        names = [m.id for m in models.data][:5]
        return ("LLM engine", True, f"openai at {llm.client.base_url} (models: {names})", "")
    except Exception as exc:
        message = redact(str(exc), settings.openai_api_key)[:200]
        return (
            "LLM engine",
            False,
            f"openai endpoint not usable: {message}",
            "check OPENAI_API_KEY and OPENAI_BASE_URL",
        )


def _check_pins() -> tuple[str, bool, str, str]:
    """Installed packages satisfy gristmill's own requirements (an unpinned upgrade, e.g.
    SQLAlchemy 2.1 under Prefect 3.8, silently stops the scheduler)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("gristmill") or []
    except metadata.PackageNotFoundError:
        return ("installed packages", False, "gristmill is not installed", "run `make setup`")
    wrong = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{requirement.name} missing (needs {requirement.specifier or 'any'})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            wrong.append(f"{requirement.name} {installed} (needs {requirement.specifier})")
    if not wrong:
        return ("installed packages", True, f"{len(requires)} requirements satisfied", "")
    return (
        "installed packages",
        False,
        "; ".join(wrong),
        "reinstall with `make setup` (or `pip install .`) to get the pinned versions",
    )


def _local_api_url(settings: Settings) -> str | None:
    from pipelines.environment import prefect_home
    from pipelines.server import find

    local = find(prefect_home(settings))
    return local.api_url if local is not None else None


def _check_prefect(settings: Settings) -> tuple[str, bool, str, str]:
    from pipelines.environment import prefect_home
    from pipelines.server import find

    url = os.environ.get("PREFECT_API_URL")
    home = prefect_home(settings)
    if not url:
        local = find(home)
        if local is not None:
            stops = (
                f", stops after {local.idle_minutes:g} idle minutes"
                if local.idle_minutes is not None
                else ""
            )
            return (
                "Prefect API",
                True,
                f"the gristmill server of this data dir at {local.url} (pid {local.pid}{stops}): "
                "every command reports there; run history is kept in "
                + (local.database or f"SQLite at {home / 'prefect.db'}"),
                "",
            )
        what = (
            "the next command starts a local server in the background and later ones reuse it "
            f"(it stops after {settings.server_idle_minutes:g} idle minutes)"
            if settings.server == "auto"
            else "each run starts a temporary local server (GRISTMILL_SERVER=ephemeral)"
        )
        return (
            "Prefect API",
            True,
            f"no server up and PREFECT_API_URL not set: {what}; run history is kept in "
            f"{_database(home)}; `gristmill server` shows it in the UI",
            "",
        )
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
            healthy = json.loads(response.read() or b"false") is True
        return ("Prefect API", healthy, f"{url} healthy (run history is kept by that server)", "")
    except Exception as exc:
        return ("Prefect API", False, f"{url} unreachable ({exc})", "start `gristmill server`")


def _database(home: Path) -> str:
    """The database a server started now would use, in words (no password)."""
    from pipelines.prefect_database import chosen
    from tasks.errors import ConfigurationError

    try:
        return chosen(None, os.environ, home).describe()
    except ConfigurationError as exc:
        return f"an unusable PREFECT_API_DATABASE_CONNECTION_URL ({exc.message})"


# The scheduler looks every 60 s by default and fills at least the next hour: a deployment this
# old whose schedule is due within the hour, yet without one run from it, has a failing scheduler.
SCHEDULER_GRACE_SECONDS = 180
SCHEDULER_HORIZON_SECONDS = 3600


def _due_soon(schedule: dict[str, Any], since: datetime, until: datetime) -> bool:
    """Whether the schedule (Prefect's JSON) fires between `since` and `until`."""
    import asyncio

    from prefect.server.schemas.schedules import SCHEDULE_TYPES
    from pydantic import TypeAdapter

    parsed = TypeAdapter(SCHEDULE_TYPES).validate_python(schedule)
    return bool(asyncio.run(parsed.get_dates(n=1, start=since, end=until)))


def _check_scheduler(
    url: str, grace_seconds: float = SCHEDULER_GRACE_SECONDS
) -> tuple[str, bool, str, str]:
    """Every deployment with an active schedule has runs the server's scheduler created."""

    def post(path: str, body: dict[str, object]) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            f"{url.rstrip('/')}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: list[dict[str, Any]] = json.loads(response.read())
            return result

    try:
        deployments = post("/deployments/filter", {"limit": 200})
        now = datetime.now(UTC)
        starved = []
        scheduled = 0
        for deployment in deployments:
            schedules = deployment.get("schedules") or []
            active = [s for s in schedules if isinstance(s, dict) and s.get("active")]
            if deployment.get("paused") or not active:
                continue
            scheduled += 1
            created = datetime.fromisoformat(str(deployment["created"]))
            if (now - created).total_seconds() < grace_seconds:
                continue
            horizon = now + timedelta(seconds=SCHEDULER_HORIZON_SECONDS)
            if not any(_due_soon(s["schedule"], created, horizon) for s in active):
                continue
            runs = post(
                "/flow_runs/filter",
                {
                    "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}},
                    "sort": "EXPECTED_START_TIME_DESC",  # the scheduler's runs lie ahead
                    "limit": 20,
                },
            )
            if not any(run.get("auto_scheduled") for run in runs):
                starved.append(str(deployment["name"]))
    except Exception as exc:
        return ("Prefect scheduler", False, f"cannot list deployments at {url} ({exc})", "")
    if starved:
        return (
            "Prefect scheduler",
            False,
            f"the server created no scheduled runs for {', '.join(sorted(starved))}: its "
            "scheduler service is failing (see the server's log)",
            "run the server from an install with gristmill's pins (`gristmill doctor` there "
            "shows `installed packages` ok; SQLAlchemy 2.1 breaks Prefect 3.8's scheduler), "
            "then restart it",
        )
    return (
        "Prefect scheduler",
        True,
        f"{scheduled} scheduled deployment(s), each with runs from the server's scheduler"
        if scheduled
        else "no scheduled deployments (start `gristmill serve` to register them)",
        "",
    )


def _check_chroma(settings: Settings) -> tuple[str, bool, str, str]:
    if settings.chroma_host:
        from tasks.chroma_client import check_chroma_server
        from tasks.errors import ConfigurationError

        try:
            return ("Chroma", True, f"server at {check_chroma_server(settings)}", "")
        except ConfigurationError as exc:
            return ("Chroma", False, exc.message, exc.hint or "start `chroma run`")
    path = settings.chroma_dir
    parent = path if path.exists() else path.parent
    writable = os.access(parent, os.W_OK) if parent.exists() else False
    return ("Chroma", writable, f"on disk at {path}", f"make {parent} writable")
