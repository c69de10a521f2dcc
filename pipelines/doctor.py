"""`gristmill doctor`: check settings, engines, the Prefect API and Chroma; say what to fix."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable

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

    check(*_check_prefect())
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


def _check_prefect() -> tuple[str, bool, str, str]:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return (
            "Prefect API",
            True,
            "not set: each run starts a temporary local server (history kept in ~/.prefect)",
            "",
        )
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
            healthy = json.loads(response.read() or b"false") is True
        return ("Prefect API", healthy, f"{url} healthy", "")
    except Exception as exc:
        return ("Prefect API", False, f"{url} unreachable ({exc})", "start `gristmill server`")


def _check_chroma(settings: Settings) -> tuple[str, bool, str, str]:
    if settings.chroma_host:
        from tasks.errors import ConfigurationError
        from tasks.vectorstore import check_chroma_server

        try:
            return ("Chroma", True, f"server at {check_chroma_server(settings)}", "")
        except ConfigurationError as exc:
            return ("Chroma", False, exc.message, exc.hint or "start `chroma run`")
    path = settings.chroma_dir
    parent = path if path.exists() else path.parent
    writable = os.access(parent, os.W_OK) if parent.exists() else False
    return ("Chroma", writable, f"on disk at {path}", f"make {parent} writable")
