"""`gristmill serve` and `gristmill server [stop]`: the commands that keep processes running
(the deployments on their schedules; a local Prefect server), registered by `pipelines.cli`."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pipelines.console import Verbose, fail
from pipelines.environment import load_settings, prefect_home, prepare_prefect


def serve(
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="IANA time zone of the schedules, e.g. Europe/Berlin.",
            show_default="GRISTMILL_SCHEDULE_TIMEZONE, else UTC",
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run every deployment on its schedule from this one process (Ctrl-C stops)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    settings = load_settings()
    if timezone is None:
        timezone = settings.schedule_timezone
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--timezone {timezone!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)")
    prepare_prefect(settings, verbose=verbose)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        fail(
            "serving needs a Prefect server to keep the schedules and run history: start one "
            "with `gristmill server` (commands find it), or unset GRISTMILL_SERVER=ephemeral"
        )
    from deployments.definitions import build_deployments, describe_schedule
    from pipelines.runners import check_task_runner
    from tasks.errors import GristmillError

    try:
        check_task_runner(settings)  # the served runs' tasks go where GRISTMILL_TASK_RUNNER says
        deployments = build_deployments(
            timezone,
            {"summarize": settings.summarize_schedule, "ingest": settings.ingest_schedule},
        )
    except (ValueError, GristmillError) as exc:
        fail(str(exc))
    typer.echo(f"Serving {len(deployments)} deployments (Ctrl-C stops):")
    for deployment in deployments:
        typer.echo(
            f"  {deployment.flow_name}/{deployment.name}: {describe_schedule(deployment)}"
            f"  [{', '.join(deployment.tags)}]"
        )
    typer.echo(f"Runs: {api_url.removesuffix('/api')}/runs")
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, print_starting_message=False)


server_app = typer.Typer(
    help="A local Prefect server for run history and the UI.", no_args_is_help=False
)


@server_app.callback(invoke_without_command=True)
def server(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 4200,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (loopback: this machine only).")
    ] = "127.0.0.1",
    idle_minutes: Annotated[
        float | None,
        typer.Option("--idle-minutes", hidden=True, help="Stop after this long without use."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB (default: SQLite in the data "
            "dir; also PREFECT_API_DATABASE_CONNECTION_URL).",
        ),
    ] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate the schema on start.")
    ] = True,
) -> None:
    """Start a local Prefect server for run history and the UI (Ctrl-C or `server stop` ends it)."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines import prefect_database
    from pipelines import server as local_server

    settings = load_settings()
    home = prefect_home(settings)
    other = local_server.running(home)
    if other is not None:
        fail(
            f"a gristmill server already serves {home} at {other.url} (pid {other.pid}); "
            "stop it with `gristmill server stop`"
        )
    local_server.check_port(host, port)
    home.mkdir(parents=True, exist_ok=True)
    url = local_server.server_url(host, port)
    env = local_server.foreground_env(dict(os.environ), home, url)
    database = prefect_database.chosen(database_url, env, home)
    prefect_database.prepare(database, migrate=migrate)
    env.update(prefect_database.server_settings(database, migrate=migrate))
    typer.echo(f"Prefect server (database: {database.describe()}); UI at {url}")
    typer.echo("gristmill commands for this data dir find it; point other flows and workers at it:")
    typer.echo(f"  export PREFECT_API_URL={url}/api")
    typer.echo("Stop it with Ctrl-C, `kill`, or `gristmill server stop`.")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host]
    code = local_server.run(
        [*command, "--port", str(port)], env, home, url, idle_minutes, database.describe()
    )
    raise typer.Exit(0 if code in (0, -2, -15, 130, 143) else code)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the `gristmill server` started from this data folder, and wait until it has."""
    from pipelines import server as local_server

    home = prefect_home(load_settings())
    stopped = local_server.stop(home)
    if stopped is None:
        typer.echo(f"No gristmill server is running for {home}.")
    else:
        typer.echo(f"Stopped the Prefect server at {stopped.url} (pid {stopped.pid}).")
