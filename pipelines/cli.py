"""The `gristmill` command line: one command per job, one line and an exit code on errors.

Exit codes: 0 all done; 1 the run finished but some items failed (reported, the rest
written); 2 bad usage or configuration. Heavy libraries (prefect, pandas, chromadb, GX) are
imported inside the commands, so `gristmill --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from tasks.settings import Settings

app = typer.Typer(
    name="gristmill",
    help="Prefect pipelines that grind raw text into useful products.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"gristmill: error: {message}", err=True)
    raise SystemExit(code)


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


def prepare_prefect(settings: Settings, *, verbose: bool = False) -> None:
    """Point Prefect's result storage under the data dir and quieten its console logs.

    Must run before prefect is imported: Prefect reads these settings at import time.
    """
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(settings.results_dir.resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Run logs still reach the Prefect API and UI; only the terminal copy is quietened.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.command()
def summarize(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Transcript files or folders [default: <data_dir>/transcripts]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder [default: <data_dir>/summaries].")
    ] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="offline or openai [default: from settings].")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute, ignoring caches.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs.")] = False,
) -> None:
    """Summarise meeting transcripts into JSON and Markdown."""
    if engine not in (None, "offline", "openai"):
        fail(f"--engine must be offline or openai, not {engine!r}")
    settings = load_settings(engine=engine)
    prepare_prefect(settings, verbose=verbose)
    from tasks.errors import GristmillError
    from tasks.summaries import build_summarizer

    try:
        summarizer = build_summarizer(settings)
    except GristmillError as exc:
        fail(str(exc))
    from pipelines.summarize import summarize_flow_for

    with _spinner(not as_json, f"Summarising with {summarizer.engine} ({summarizer.model})"):
        state = summarize_flow_for(settings)(
            paths=[str(p) for p in paths] if paths else None,
            out_dir=str(out) if out else None,
            force=force,
            settings=settings,
            summarizer=summarizer,
            return_state=True,
        )
    report = state.result(raise_on_failure=False)
    from tasks.reporting import SummarizeReport

    if not isinstance(report, SummarizeReport):
        fail(f"the run did not finish: {state.message or report}", EXIT_ITEMS_FAILED)
    if as_json:
        print_json(
            {
                "transcripts": [
                    t.model_dump(include={"source", "status", "output", "error"})
                    for t in report.transcripts
                ],
                "llm_calls": report.llm_calls,
                "usage": report.usage.model_dump(
                    include={"prompt_tokens", "completion_tokens", "cost_usd"}
                ),
                "duration_s": report.duration_s,
                "engine": report.engine,
                "model": report.model,
            }
        )
    else:
        _print_summary_table(report, settings)
    raise typer.Exit(EXIT_ITEMS_FAILED if report.failed else EXIT_OK)


class _spinner:
    """A rich status spinner on stderr while a flow runs (nothing when output is JSON)."""

    def __init__(self, enabled: bool, message: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.message = message
        self._status: Any = None

    def __enter__(self) -> _spinner:
        if self.enabled:
            from rich.console import Console

            self._status = Console(stderr=True).status(self.message)
            self._status.__enter__()
        elif not self.enabled:
            typer.echo(self.message + " ...", err=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


def _print_summary_table(report: Any, settings: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=report.headline(), title_justify="left")
    for column in ("Transcript", "Status", "Chunks", "LLM calls", "Output / reason"):
        table.add_column(column, overflow="fold")
    colours = {"ok": "green", "cached": "cyan", "failed": "red"}
    for t in report.transcripts:
        table.add_row(
            t.source,
            f"[{colours[t.status]}]{t.status}[/]",
            str(t.chunks),
            str(t.llm_calls),
            t.output if t.status != "failed" else t.error,
        )
    console.print(table)
    usage = report.usage
    console.print(
        f"engine {report.engine} ({report.model}) · LLM calls {report.llm_calls} · "
        f"tokens {usage.prompt_tokens}+{usage.completion_tokens} · cost ${usage.cost_usd:.4f} · "
        f"{report.duration_s:.1f} s"
    )
    console.print(
        "Run history: `prefect server start` then open http://127.0.0.1:4200/runs"
        if not os.environ.get("PREFECT_API_URL")
        else f"Run history: {os.environ['PREFECT_API_URL'].removesuffix('/api')}/runs"
    )


@app.command()
def doctor() -> None:
    """Check settings, engines, the Prefect API and model files; say what to fix."""
    from pipelines.doctor import run_checks

    settings = load_settings()
    problems = run_checks(settings, echo=typer.echo)
    raise typer.Exit(EXIT_USAGE if problems else EXIT_OK)


def main() -> None:
    """Console-script entry point: errors become one line and an exit code."""
    from tasks.errors import GristmillError

    try:
        app()
    except GristmillError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)


if __name__ == "__main__":
    main()
