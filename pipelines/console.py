"""What every `gristmill` command prints with: one-line errors and exit codes, JSON, tables
(plain tab-separated lines when not a terminal), a spinner and progress bars on stderr.

rich is imported only when a terminal will show its output."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from tasks.reporting import Progress as ProgressCounts

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2

Shards = Annotated[
    int,
    typer.Option(
        "--shards",
        min=1,
        help="Cut the job into N parts, each its own flow run (on GRISTMILL_WORK_POOL's workers "
        "when set, else here); a re-run makes the same parts.",
    ),
]
# Options several commands take, written once so their flags and help read the same everywhere.
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs.")]
ReportJson = Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")]
Collection = Annotated[
    str | None, typer.Option("--collection", help="Chroma collection.", show_default="settings")
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit (a reason that spans lines, such as Prefect's message
    for parameters it refused, is joined into one)."""
    typer.echo(f"gristmill: error: {' '.join(message.split())}", err=True)
    raise SystemExit(code)


def fail_on_server_trouble(exc: Exception) -> None:
    """Exit with one line when `exc` is the Prefect server failing or unreachable (its
    database restarting, say); return otherwise."""
    from tasks.reporting import server_trouble, short_error

    if server_trouble(exc):
        fail(
            f"the Prefect server failed ({short_error(exc)}); run the command again: work "
            "already done is kept",
            EXIT_ITEMS_FAILED,
        )


def error_exit_code(exc: Exception) -> int:
    """Exit code for an error a flow ended with: bad checks on items 1, anything else 2."""
    from tasks.errors import DataQualityError, GristmillError

    if isinstance(exc, DataQualityError):
        return EXIT_ITEMS_FAILED
    return exc.exit_code if isinstance(exc, GristmillError) else EXIT_ITEMS_FAILED


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


class ProgressBar:
    """A rich progress bar on stderr for flows that report `Progress`: items done of total,
    their parts (chunks) done of those known so far, elapsed time and an estimate of the time
    left. Shown only on a terminal (or on the `console` a test gives): piped, it prints nothing.

    The bar and the estimate follow `Progress.completed`, which moves while a batch is still in
    flight. The time left is the pace since the work began (`_time_left`), so it shows from the
    first move of the bar: the first embedded sub-batch, not the first document batch."""

    def __init__(self, enabled: bool, console: Any = None) -> None:
        self._progress: Any = None
        self._bar: Any = None
        self._parts: tuple[str, str] | None = None
        self._began: float | None = None
        self._began_with_parts = False
        self._estimate: float | None = None
        if enabled and (console is not None or sys.stderr.isatty()):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("left"),
                _time_left_column(),
                console=console or Console(stderr=True),
                transient=True,
            )

    def start(self, label: str, parts: tuple[str, str] | None = None) -> None:
        """Show the bar for `label` items (cut into `parts`, singular and plural, if they are),
        total not yet known."""
        self._parts = parts
        if self._progress is not None:
            self._progress.start()
            self._bar = self._progress.add_task(
                label, total=None, counts="", began=None, estimate=self._estimate
            )

    def update(self, progress: ProgressCounts) -> None:
        if self._progress is None:
            return
        if progress.completed == 0 and not self._began_with_parts:
            # The work begins at the last report with nothing done, or at the first with parts
            # handed over (chunks to the embedder): a second batch's own hand-over while the
            # first embeds must not restart the clock.
            self._began = self._progress.get_time()
            self._began_with_parts = progress.parts_known > 0
        self._progress.update(
            self._bar,
            completed=progress.completed,
            total=progress.total,
            counts=self.counts(progress),
            began=self._began,
        )

    def estimate(self, seconds: float) -> None:
        """The time the work is expected to take, shown as the time left (`~0:02:10`) until
        the bar first moves; from then on the measured pace (`_time_left`) replaces it. May be
        called from another thread, before or after `start`."""
        self._estimate = seconds
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, estimate=seconds)

    def counts(self, progress: ProgressCounts) -> str:
        """`37/200`, then `· 512/1,104 chunks` when there are parts (`512 chunks` while all
        those known are done: a total still to come)."""
        text = f"{progress.done:,}/{progress.total:,}"
        if self._parts is None or not progress.parts_known:
            return text
        one, many = self._parts
        name = one if progress.parts_known == 1 else many
        if progress.parts_done == progress.parts_known:
            return f"{text} · {progress.parts_done:,} {name}"
        return f"{text} · {progress.parts_done:,}/{progress.parts_known:,} {name}"

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _time_left(task: Any) -> float | None:
    """Seconds left at the pace since the work began (the task's `began` field): known from the
    first update that moves the bar, where rich's own estimate needs two; rich's without one."""
    began = task.fields.get("began")
    if began is None or not task.completed or task.total is None:
        return task.time_remaining
    spent = task.get_time() - began
    return (task.total - task.completed) * spent / task.completed if spent > 0 else None


def _estimated(task: Any) -> float | None:
    """The estimate given before the work began (`ProgressBar.estimate`), until the bar moves."""
    estimate = task.fields.get("estimate")
    return estimate if estimate is not None and not task.completed else None


def _time_left_column() -> Any:
    """A rich column showing `_time_left` as h:mm:ss (rich is imported here, on a terminal)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class TimeLeft(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = _estimated(task)
            about = "~" if left is not None else ""
            if left is None and task.total is not None:
                left = _time_left(task)
            if left is None:
                return Text("-:--:--", style="progress.remaining")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{about}{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return TimeLeft()


def print_table(title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """A rich table on a terminal; plain tab-separated lines when piped (CI logs, `| cat`),
    so nothing wraps at 80 columns or splits a path mid-word."""
    if not sys.stdout.isatty():
        typer.echo(title)
        for row in (columns, *rows):
            typer.echo("\t".join(" ".join(cell.split()) for cell in row))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    Console().print(table)
