"""Run reports: what happened to every item, as a model, a Markdown artifact and a table."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID

from pydantic import BaseModel, Field

from tasks.llm import Usage
from tasks.quality import QualityReport

if TYPE_CHECKING:
    from prefect.states import State

ItemStatus = Literal["ok", "cached", "failed"]

logger = logging.getLogger(__name__)


class _OwnErrorsInWords(logging.Filter):
    """Drops the traceback of gristmill's own errors (a bad input file, a refused request, ...),
    and the task-run lines of items the report lists, from a terminal handler: their message
    says what is wrong, and a traceback under it reads like a crash. Handlers of the run loggers
    (the Prefect API, so the UI) run before the root's console handler and still get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.errors import GristmillError

        error = record.exc_info[1] if record.exc_info else None
        ours = isinstance(error, GristmillError) or server_trouble(error)
        # A task that failed on one item (a bad file, a refused row) is a row of the run's
        # report table: say it once there, in words, not also in two log lines. Its "Finished
        # in state Failed" line follows the exception's line, which still shows when the error
        # is not ours.
        if (
            record.name == "prefect.task_runs"
            and record.levelno >= logging.ERROR
            and (ours or record.getMessage().startswith("Finished in state Failed"))
        ):
            return False
        if ours:
            record.exc_info = None
            record.exc_text = None
        return True


def server_trouble(error: BaseException | None) -> bool:
    """The Prefect server failing or unreachable (its database restarting, say): said in one
    line by the CLI (`pipelines.cli.main`), not a crash of ours."""
    if error is None:
        return False
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(error, PrefectHTTPStatusError | httpx.TransportError)


def own_errors_without_tracebacks() -> None:
    """Install `_OwnErrorsInWords` on Prefect's console handler (imports prefect)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OwnErrorsInWords) for f in handler.filters
        ):
            handler.addFilter(_OwnErrorsInWords())


def state_report(state: Any) -> Any:
    """What a finished flow run produced: its report (also when it failed), or the exception."""
    from tasks.errors import RunFailed

    result = state.result(raise_on_failure=False)
    return result.report if isinstance(result, RunFailed) else result


def tag_flow_run(*new_tags: str) -> None:
    """Add tags (pipeline, engine) to the current flow run: one API call per run.

    Not `with prefect.tags(...)` around the tasks: in Prefect 3.8 every task run that carries
    tags first acquires a tag-concurrency lease over the API (task_engine -> concurrency ->
    acquire_concurrency_slots_with_lease), one round trip per task run, and we saw it stall up to
    2.4 s against the local server while its services wrote events (sampled stacks while
    profiling the summarise flow). Tags on the flow run are what the UI filters by.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=sorted({*current, *new_tags}))
    except Exception as exc:  # tags are for people browsing runs; never fail a run for them
        logger.warning("could not tag flow run %s: %s", run_id, exc)


@dataclass(frozen=True)
class Progress:
    """Where a run is: items (documents, transcripts, rows) done of their total, and the parts
    they are cut into (chunks) done of those known so far. `work` counts items in flight by
    their share done (a document batch half embedded is half its documents), so a bar and its
    estimate of the time left move between whole items; None when only whole items count."""

    done: int
    total: int
    parts_done: int = 0
    parts_known: int = 0
    work: float | None = None

    @property
    def completed(self) -> float:
        """Items' worth of work done, never past the total."""
        return min(self.done if self.work is None else max(self.work, self.done), self.total)


ProgressCallback = Callable[[Progress], None]


class RunProgress:
    """A run's progress, moved together in its Prefect progress artifact (the UI) and the
    caller's `on_progress(Progress)` (the CLI's bar). Call it from a flow run; thread-safe."""

    # Seconds between two updates of the artifact below 100%: a run reports progress many
    # times a second (every embedded sub-batch) and the UI needs no more.
    ARTIFACT_EVERY_S = 1.0

    def __init__(
        self, key: str, description: str, on_progress: ProgressCallback | None = None
    ) -> None:
        from prefect.artifacts import create_progress_artifact

        self.on_progress = on_progress
        self._shown = 0
        self._shown_at = 0.0
        self._lock = threading.Lock()
        self._posting: ThreadPoolExecutor | None = None
        self.artifact: UUID | None = None
        with _for_people("the progress artifact"):
            made = create_progress_artifact(progress=0.0, key=key, description=description)
            self.artifact = cast(UUID, made) if made is not None else None

    def __call__(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)
        self._set(100.0 * progress.completed / max(progress.total, 1))

    def complete(self) -> None:
        """100%, and wait until every update has reached the server."""
        self._set(100.0)
        with self._lock:
            posting, self._posting = self._posting, None
        if posting is not None:
            posting.shutdown(wait=True)

    def _set(self, percent: float) -> None:
        """One API call per whole percent and per second at most (100% always): 2,000 small
        items must not cost 2,000 round trips to the Prefect server. The call is made on a
        thread of its own, in order: progress is reported from the embedding thread (every
        sub-batch), which must not wait for the server."""
        with self._lock:
            now = time.monotonic()
            due = percent >= 100 or now - self._shown_at >= self.ARTIFACT_EVERY_S
            if self.artifact is None or int(percent) <= self._shown or not due:
                return
            self._shown, self._shown_at = int(percent), now
            if self._posting is None:
                self._posting = ThreadPoolExecutor(1, thread_name_prefix="progress-artifact")
            self._posting.submit(self._post, self.artifact, percent)

    @staticmethod
    def _post(artifact: UUID, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        with _for_people("the progress artifact"):
            update_progress_artifact(artifact, percent)


@contextlib.contextmanager
def _for_people(what: str) -> Iterator[None]:
    """Artifacts are for people browsing runs: a Prefect server that cannot store one (its
    database restarting: seen answering 500) must not fail a run whose work is done or going
    on. Logged as a warning; the run's own state and outputs are unaffected."""
    try:
        yield
    except Exception as exc:
        logger.warning("could not update %s: %s", what, short_error(exc))


def short_error(exc: BaseException) -> str:
    return str(exc).split(" - Response:", 1)[0][:300]


def publish_report(key: str, markdown: str, description: str) -> None:
    """The run's report artifact (the UI's Artifacts tab), never failing the run."""
    from prefect.artifacts import create_markdown_artifact

    with _for_people(f"the report artifact {key!r}"):
        create_markdown_artifact(key=key, markdown=markdown, description=description)


def report_state(report: Any, headline: str, failed: bool, problems: Sequence[str]) -> State:
    """The final state of a run that made `report` (`state_report` reads it back): Completed
    with the headline, or Failed with the headline and the first problems in words."""
    from prefect.states import Completed, Failed

    from tasks.errors import RunFailed

    if failed:
        message = ". ".join([headline, "; ".join(problems)]) if problems else headline
        return Failed(message=message, data=RunFailed(message, report=report))
    return Completed(message=headline, data=report)


def finish_run(
    report: Any, *, key: str, markdown: str, failed: bool, problems: Sequence[str]
) -> State:
    """A pipeline run's end: its report artifact under `key`, its headline in the log, and its
    final state (`report_state`)."""
    from prefect import get_run_logger

    headline: str = report.headline()
    publish_report(key=key, markdown=markdown, description=headline)
    get_run_logger().info(headline)
    return report_state(report, headline, failed, problems)


class ItemOutcome(BaseModel):
    """The end of one input item: its output, or its reason for failing."""

    source: str
    status: ItemStatus
    output: str | None = None
    error: str | None = None
    chunks: int = 0
    llm_calls: int = 0
    usage: Usage = Field(default_factory=Usage)
    quality: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="Read with care, e.g. malformed cues kept by line."
    )


class SummarizeReport(BaseModel):
    """The machine-readable report of one `summarize_transcripts` run."""

    transcripts: list[ItemOutcome]
    engine: str
    model: str
    llm_calls: int
    usage: Usage
    duration_s: float
    flow_run_id: str | None = None

    @property
    def failed(self) -> list[ItemOutcome]:
        return [t for t in self.transcripts if t.status == "failed"]

    def headline(self) -> str:
        counts = {
            s: sum(t.status == s for t in self.transcripts) for s in ("ok", "cached", "failed")
        }
        warned = sum(bool(t.warnings) for t in self.transcripts)
        return (
            f"{len(self.transcripts)} transcripts: {counts['ok']} summarised, "
            f"{counts['cached']} unchanged, {counts['failed']} failed"
            + (f" ({warned} with warnings)" if warned else "")
        )


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _common_folder(paths: list[str]) -> str | None:
    """The folder all `paths` are under, if they share one (so a table can show short names)."""
    if not paths:
        return None
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths]) or None
    except ValueError:  # absolute and relative paths mixed
        return None


def _under(path: str | None, folder: str | None) -> str:
    return os.path.relpath(path, folder) if path and folder else str(path)


def summarize_report_markdown(report: SummarizeReport) -> str:
    """The run report as Markdown for the Prefect UI.

    The table must fit a 1,400 px browser (checked in tests/e2e/test_prefect_server.py): the
    short columns come first and paths are shown under the folders named above the table, since
    a path does not wrap and pushes every column after it off the screen."""
    usage = report.usage
    sources = _common_folder([t.source for t in report.transcripts])
    outputs = _common_folder(
        [t.output for t in report.transcripts if t.status != "failed" and t.output]
    )
    lines = [
        "# Transcript summaries",
        "",
        f"**{report.headline()}** in {report.duration_s:.1f} s · engine `{report.engine}` · "
        f"model `{report.model}`",
        "",
        f"LLM calls: {report.llm_calls} · prompt tokens: {usage.prompt_tokens} · "
        f"completion tokens: {usage.completion_tokens} · estimated cost: ${usage.cost_usd:.4f}",
        "",
        *([f"Transcripts from `{sources}`", ""] if sources else []),
        *([f"Summaries written to `{outputs}`", ""] if outputs else []),
        "| Transcript | Status | Data quality | Chunks | LLM calls | Cost (USD) "
        "| Output / reason | Warnings |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    details: list[str] = []
    for t in report.transcripts:
        name = _under(t.source, sources)
        cells = (
            name,
            t.status,
            QualityReport.verdict(t.quality),
            t.chunks,
            t.llm_calls,
            f"{t.usage.cost_usd:.4f}",
            _under(t.output, outputs) if t.status != "failed" else t.error,
            len(t.warnings) or "-",
        )
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
        if t.quality or t.warnings:
            details.append(f"- **{name}**: " + "; ".join(t.quality + t.warnings))
    if details:
        lines += ["", "## Data-quality checks and warnings", "", *details]
    return "\n".join(lines) + "\n"


@functools.cache
def file_mode() -> int:
    """The mode `open()` would give a new file (0o666 less the umask): mkstemp's 0o600 is for
    temporary files, not for summaries and tables people share."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, data: object) -> None:
    write_atomically(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
