"""What a command sets up before its flow runs: settings from the environment and .env (with
its command-line overrides), and Prefect pointed at a server with its result storage under
the data dir. `pipelines.doctor` reads the server's home from here too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipelines.console import fail

if TYPE_CHECKING:
    from pipelines.server import RunningServer
    from tasks.settings import Settings


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env, with command-line overrides applied."""
    from pydantic import ValidationError

    from tasks.settings import Settings

    try:
        settings = Settings()
        values = {k: v for k, v in overrides.items() if v is not None}
        return settings.model_copy(update=values) if values else settings
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fail(f"invalid setting GRISTMILL_{field.upper()}: {first['msg']}")


def prepare_prefect(settings: Settings, *, verbose: bool = False, checks: bool = False) -> None:
    """Point Prefect at a server, its result storage under the data dir; quieten its console.

    The server: an exported PREFECT_API_URL wins; else the `gristmill server` up for this data
    dir; else (GRISTMILL_SERVER=auto) one started now in the background and kept for the next
    commands; else (ephemeral) a temporary one inside this process. While a server starts (the
    command is idle for seconds) Prefect is imported, pointed at it, and with `checks` (the
    command will most likely run quality checks) great-expectations too
    (`tasks.quality.preload`).
    Must run before prefect is imported: Prefect reads these settings at import time. It then
    imports prefect itself, to keep gristmill's own errors free of tracebacks on the terminal.
    """
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(settings.results_dir.resolve()))
    server_environ = dict(os.environ)  # a kept server starts without the client settings below
    # Prefect's client retries 429, 502 and 503 (2, 4, 8, 16, 32 s apart); a server whose
    # PostgreSQL restarts answers 500 for the seconds it is gone
    # (tests/e2e/test_postgres_restart.py): retry those too, so a run rides over it instead of
    # failing at its next state change.
    os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Run logs still reach the Prefect API and UI; only the terminal copy is quietened.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL"):
        local = _local_server(settings, checks, server_environ)
        if local is not None:
            os.environ["PREFECT_API_URL"] = local.api_url
    if not os.environ.get("PREFECT_API_URL"):
        # No server to report to: Prefect starts a temporary one for this command. Give it the
        # database `gristmill server` serves, so these runs show in the UI once it starts.
        database = prefect_home(settings) / "prefect.db"
        database.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(
            "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{database}"
        )
        # Prefect waits 20 s for that server; on a brand-new database (a first `make demo`) it
        # needs ~20 s on its own, more on a busy 2-core machine: seen timing out in CI.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from tasks.reporting import own_errors_without_tracebacks

    own_errors_without_tracebacks()


def _local_server(
    settings: Settings, checks: bool, environ: dict[str, str]
) -> RunningServer | None:
    """The healthy `gristmill server` of this data dir; with GRISTMILL_SERVER=auto and none up,
    one started in the background now (said in one line on stderr)."""
    from pipelines import server as local_server

    home = prefect_home(settings)
    found = local_server.find(home)
    if found is None and settings.server == "auto":
        if checks:
            from tasks.quality import preload

            preload()
        command = [sys.executable, "-m", "pipelines.cli", "server"]
        command += ["--idle-minutes", str(settings.server_idle_minutes)]
        env = {**environ, "PREFECT_HOME": str(home)}
        found, started = local_server.ensure(home, command, env, on_start=_import_prefect_for)
        if started:
            typer.echo(
                f"gristmill: started a Prefect server at {found.url} for this and later commands "
                f"(stops after {settings.server_idle_minutes:g} idle minutes; "
                "`gristmill server stop` ends it now)",
                err=True,
            )
    if found is not None and found.idle_minutes is not None:
        local_server.keep_alive(home, found.idle_minutes)
    return found


def _import_prefect_for(port: int) -> None:
    """Point Prefect at the server just spawned on `port` and import it on a thread while the
    server starts (~2 s of this process's CPU that used to follow the ~5 s wait). The thread
    is not a daemon: the interpreter waits for it at exit, so a failed start that exits at
    once never kills an import half done."""
    import threading

    from pipelines.server import server_url

    # the kept server is started without --host (see _local_server)
    os.environ["PREFECT_API_URL"] = f"{server_url('127.0.0.1', port)}/api"
    threading.Thread(target=_import_prefect, name="gristmill-import-prefect").start()


def _import_prefect() -> None:
    import prefect.flows  # noqa: F401  (what every command's flow run needs first)


def prefect_home(settings: Settings) -> Path:
    """Where `gristmill server` keeps Prefect's database: $PREFECT_HOME, else <data_dir>/prefect."""
    return Path(os.environ.get("PREFECT_HOME") or settings.data_dir / "prefect").resolve()


def check_port(host: str, port: int) -> None:
    """Exit with one line when `host:port` cannot be listened on (taken, or not ours)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port")
