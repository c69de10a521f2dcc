"""Flow `batch_records`: a table of records through a prompt (or a built-in task).

build the job and the engine from the parameters and settings -> read the input in chunks ->
screen rows (ids, template, text length; unusable rows end `invalid_input`) + input suite ->
batches of rows as tasks, sharing the engine's rate limiter (rows already done come from the
journal or, with retry_failed, from the previous output) -> write output and dead-letter rows
atomically -> output suite -> report artifact.

Every input row comes out exactly once, in input order, as `ok`, `failed` or `invalid_input`.
The flow's parameters are JSON (the `gristmill batch` options), so its deployment runs from the
UI and `prefect deployment run`; the CLI and tests set the settings, a row engine and a progress
callback with `run_context` (pipelines/run_context.py), a deployment run builds its own.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines.run_context import current_run, run_context
from pipelines.runners import task_runner_for
from pipelines.shards import (
    ShardProgress,
    is_parent,
    leave_report,
    one_run_per_shard,
    row_range,
    run_shards,
    shard_failures,
)
from tasks.batch.dispatch import process_row_batch, row_batches, settle_known_rows
from tasks.batch.journal import RowJournal
from tasks.batch.parts import join_parts, part_path
from tasks.batch.plan import BatchPlan, plan_batch
from tasks.batch.quality import QualityGates
from tasks.batch.reading import Row, count_rows, iter_row_chunks
from tasks.batch.report import (
    BatchReport,
    batch_report,
    batch_report_markdown,
    merge_batch_reports,
)
from tasks.batch.results import RowResult, failed_result
from tasks.batch.writing import RecordWriter
from tasks.errors import GristmillError, ShardsUnfinished
from tasks.portable import let_go
from tasks.reporting import (
    Progress,
    ProgressCallback,
    RunProgress,
    publish_report,
    report_state,
    tag_flow_run,
)
from tasks.settings import Settings

# Prefect validates a run's parameters with a pydantic model of the flow's signature, built
# when the flow is defined and again on every call; pydantic warns, on the terminal of every
# `gristmill batch`, that its field `schema` shadows `BaseModel.schema` (a deprecated method
# nothing calls). `schema` is the parameter's name for deployment runs, so the warning goes.
warnings.filterwarnings(
    "ignore", message='Field name "schema" in "Batch_RecordsModel"', category=UserWarning
)

REPORT_ARTIFACT_KEY = "batch-records-report"
PROGRESS_ARTIFACT_KEY = "batch-records-progress"


def _run_name() -> str:
    return f"batch {Path(str(flow_run.parameters.get('input_path', 'records'))).name}"


@flow(
    name="batch-records",
    flow_run_name=_run_name,
    description="Run every row of a table through a prompt template or a built-in task.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
)
@one_run_per_shard
def batch_records(
    input_path: str,
    output_path: str,
    template: str | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
    schema: str | None = None,
    id_column: str | None = None,
    text_column: str = "text",
    system: str | None = None,
    model: str | None = None,
    temperature: float | None = None,
    concurrency: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    mode: str = "online",
    retry_failed: bool = False,
    expectations_path: str | None = None,
    input_expectations_path: str | None = None,
    max_chars: int = 100_000,
    poll_interval_s: float = 10.0,
    chunk_rows: int | None = None,
    shards: int = 1,
    shard: int | None = None,
) -> State:
    """Process every row of `input_path` into `output_path`; Failed when any row is not ok.

    Args:
        input_path: Input table (.csv, .jsonl or .parquet), relative to the working directory.
        output_path: Output table (.csv, .jsonl or .parquet); failed rows also go to
            <output>.dead-letter.jsonl.
        template: Jinja2 prompt template over the columns: a file path or the text itself.
            Needs an LLM endpoint. Give either this or `task`.
        task: Built-in offline task instead of a template: summarize, classify or embed.
        labels: Labels for the classify task (at least two).
        schema: Output schema for a template: a JSON Schema file, or fields such as
            'category,priority:int'. Without one the result is text.
        id_column: Column holding row ids; default: a stable hash of the row.
        text_column: Column the built-in tasks read.
        system: System prompt for a template.
        model: Chat model; default: the llm_model setting.
        temperature: Sampling temperature; default: the llm_temperature setting.
        concurrency: Requests in flight; default: the batch_concurrency setting.
        rpm: Requests per minute; default: the batch_rpm setting (no limit).
        tpm: Tokens per minute; default: the batch_tpm setting (no limit).
        mode: online, or batch-api (the OpenAI Batch API, for templates).
        retry_failed: Re-process only the rows of output_path that are not ok.
        expectations_path: A great-expectations suite (JSON) checked on the output.
        input_expectations_path: A great-expectations suite (JSON) checked on the input
            before any LLM call; the rows it fails end invalid_input with its reason.
        max_chars: Longest row text accepted; longer rows end invalid_input.
        poll_interval_s: Seconds between Batch API polls.
        chunk_rows: Rows read into memory at a time; default: 10 tasks' worth (at least 1000).
        shards: Cut the rows into this many contiguous ranges, each its own flow run (on the
            work pool's workers when GRISTMILL_WORK_POOL is set, else here); the parent joins
            their outputs in input order. See pipelines/shards.py.
        shard: The range this run processes (set by the parent of a sharded job).

    The `run_context` may set the settings, a row engine built for the same job (else one is
    built from the settings, and closed at the end) and `on_progress`, called with `Progress`
    (rows done, rows expected) after each batch.
    """
    parameters = dict(locals())
    started = time.monotonic()
    logger = get_run_logger()
    context = current_run()
    on_progress, engine = context.on_progress, context.engine
    try:
        plan = plan_batch(context.run_settings(), parameters, engine=engine)
        parent = is_parent(shards, shard)
    except GristmillError as exc:
        # the Failed state's message carries the reason to the UI; logged at INFO so the
        # terminal does not print it twice beside the CLI's one line
        logger.info("cannot start: %s", exc)
        return Failed(message=str(exc), data=exc)
    tag_flow_run("pipeline:batch", f"engine:{plan.engine.name}")
    try:
        if parent:
            report = _sharded(plan, parameters, shards, on_progress, started)
        else:
            report = _process(
                plan,
                chunk_rows=chunk_rows,
                on_progress=on_progress,
                started=started,
                shard=(shard, shards) if shard is not None else None,
            )
    except GristmillError as exc:
        # the output cannot be written, a Batch API job was refused, ...: the reason in words,
        # as a Failed state, instead of a traceback on the terminal
        logger.info("stopped: %s", exc)
        return Failed(message=str(exc), data=exc)
    finally:
        if engine is None:  # built here: ours to close
            plan.engine.close()
    logger.info(report.headline())
    problems = [*report.failures[:3], *report.quality_errors[:3]]
    return report_state(report, report.headline(), not report.success, problems)


BATCH_TASKS_AT_ONCE = 4
"""Row batch tasks in flight on the thread runner (each sends its rows `concurrency` at a time)."""


def batch_records_for(settings: Settings) -> Flow[..., State]:
    """The flow on the task runner the settings ask for (`pipelines/runners.py`)."""
    return batch_records.with_options(task_runner=task_runner_for(settings, BATCH_TASKS_AT_ONCE))


def _process(
    plan: BatchPlan,
    *,
    chunk_rows: int | None,
    on_progress: ProgressCallback | None,
    started: float,
    shard: tuple[int, int] | None = None,
) -> BatchReport:
    """The run itself: every row once, in input order, written atomically; then the report.
    A shard `(i, n)` does the i-th of n row ranges into its part file (see tasks/batch/parts.py),
    with its own journal file."""
    job, engine = plan.job, plan.engine
    numbers, writer_name = None, ""
    if shard is not None:
        numbers = row_range(count_rows(plan.reader), *shard)
        writer_name = f"{shard[0] + 1}-of-{shard[1]}"
        plan = replace(plan, output=part_path(plan.output, *shard))
    journal = (
        RowJournal.for_job(plan.settings.batch_dir, job, writer_name) if engine.journaled else None
    )
    if engine.whole_job:  # the Batch API: every row in one submission, so one wait
        chunk_rows = chunk_rows or plan.reader.estimate_rows() + 1
    chunk_rows = chunk_rows or max(1000, plan.settings.batch_rows_per_task * 10)
    progress = _Progress(plan, on_progress, len(numbers) if numbers is not None else None)
    gates = QualityGates(job, plan.input_suite, plan.output_suite)
    writer = RecordWriter(
        plan.output, job, plan.reader.columns, input_schema=plan.reader.arrow_schema
    )
    outcomes: list[RowResult] = []

    def finish(rows: list[Row], results: dict[int, RowResult], submitted: Submitted) -> None:
        for batch, batch_results in _results(submitted):
            results.update((result.number, result) for result in batch_results)
            progress.advance(len(batch))
        chunk = [results[row.number] for row in rows]
        gates.check_output(writer.write_rows(rows, chunk), chunk)
        outcomes.extend(result.outcome() for result in chunk)

    try:
        # One chunk ahead: the next chunk's tasks are queued before this one's results are
        # awaited, so the engine does not drain at a chunk boundary (before, every call of a
        # chunk ended before the next chunk was read, screened and submitted).
        ahead: tuple[list[Row], dict[int, RowResult], Submitted] | None = None
        for rows in iter_row_chunks(plan.reader, job, chunk_rows, numbers):
            if gates.flags_rows:  # the user's input suite decides which rows are sent
                gates.check_input(rows)
            results, todo = settle_known_rows(rows, plan.previous)
            progress.advance(len(rows) - len(todo))
            submitted = _submit(plan, todo, journal)
            if not gates.flags_rows:
                # The built-in suite only verifies what reading screened, so it runs while the
                # chunk's calls are in flight: the first one waits for great-expectations'
                # import (~3 s), which held back every call of a 2,000-row job before.
                gates.check_input(rows)
            if ahead is not None:
                finish(*ahead)
            ahead = (rows, results, submitted)
        if ahead is not None:
            finish(*ahead)
        gates.check_every_row_once(len(outcomes))
    except BaseException:
        writer.abort()
        raise
    finally:
        if journal is not None:
            journal.close()
    writer.commit()
    progress.finish()
    report = batch_report(
        plan,
        outcomes,
        gates,
        dead_letter=writer.dead_letter,
        duration_s=time.monotonic() - started,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )
    if shard is not None:
        leave_report(plan.settings, report)
    publish_report(
        key=REPORT_ARTIFACT_KEY,
        markdown=batch_report_markdown(report),
        description=report.headline(),
    )
    return report


Submitted = list[tuple[list[Row], PrefectFuture[list[RowResult]]]]


def _submit(plan: BatchPlan, rows: list[Row], journal: RowJournal | None) -> Submitted:
    """The rows as tasks of `batch_rows_per_task` rows (one task for a whole-job engine),
    submitted now; they run side by side on the flow's task runner."""
    size = len(rows) if plan.engine.whole_job else plan.settings.batch_rows_per_task
    return [
        (
            batch,
            process_row_batch.submit(
                batch,
                plan.engine,
                journal,
                name=f"{plan.source.name} rows {batch[0].number}-{batch[-1].number}",
            ),
        )
        for batch in row_batches(rows, max(size, 1))
    ]


def _results(submitted: Submitted) -> Iterator[tuple[list[Row], list[RowResult]]]:
    """Each batch's results, in order (a batch whose task failed as a whole ends `failed`
    with the reason)."""
    for batch, future in submitted:
        try:
            results = future.result()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            results = [failed_result(row, reason) for row in batch]
        let_go(future)  # not recomputed on Dask if its worker dies later (tasks/portable.py)
        yield batch, results


def _sharded(
    plan: BatchPlan,
    parameters: dict[str, Any],
    shards: int,
    on_progress: ProgressCallback | None,
    started: float,
) -> BatchReport:
    """The parent of a sharded job: the shards (row ranges), then their parts joined into the
    output in input order and their reports merged. A shard that left no report fails the job
    in words, with no output written: a re-run takes its finished rows from the journal.
    Shards run here share its settings and engine (so one rate limiter)."""
    jobs = {k: v for k, v in parameters.items() if k not in ("shards", "shard")}
    total = count_rows(plan.reader)
    progress = ShardProgress(on_progress, total) if on_progress else None
    with run_context(settings=plan.settings, engine=plan.engine):
        results = run_shards(batch_records, jobs, shards, plan.settings, BatchReport, progress)
    problems = shard_failures(results)
    if problems:
        raise ShardsUnfinished(
            "; ".join(problems) + ": run it again to finish (done rows are kept)"
        )
    reports = [r.report for r in results]
    rows, dead_letter = join_parts(plan.output, shards)
    report = merge_batch_reports(reports, plan.output, dead_letter, time.monotonic() - started)
    report.flow_run_id = str(flow_run.id) if flow_run.id else None
    if rows != total or report.rows != total:
        report.quality_errors.append(
            f"every row once: {total} input rows, {report.rows} processed, {rows} written"
        )
    publish_report(
        key=REPORT_ARTIFACT_KEY,
        markdown=batch_report_markdown(report),
        description=report.headline(),
    )
    return report


class _Progress:
    """Rows done of rows expected: the run's progress artifact, and the CLI's bar."""

    def __init__(
        self, plan: BatchPlan, on_progress: ProgressCallback | None, total: int | None = None
    ) -> None:
        self.total = plan.reader.estimate_rows() if total is None else total
        self.done = 0
        self.report = RunProgress(
            PROGRESS_ARTIFACT_KEY, f"{plan.source.name}: rows processed", on_progress
        )
        get_run_logger().info(
            "%s: ~%d rows with %s (%s)",
            plan.source,
            self.total,
            plan.engine.name,
            plan.engine.model,
        )

    def advance(self, rows: int) -> None:
        if rows == 0:
            return
        self.done += rows
        self.report(Progress(self.done, self.total))

    def finish(self) -> None:
        self.report.complete()
