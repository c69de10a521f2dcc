"""Flow `process_records`: a table of records through a prompt (or a built-in task).

build the job and the engine from the parameters and settings -> read the input in chunks ->
screen rows (ids, template, text length; unusable rows end `invalid_input`) + input suite ->
batches of rows as tasks, sharing the engine's rate limiter (rows already done come from the
journal or, with retry_failed, from the previous output) -> write output and dead-letter rows
atomically -> output suite -> report artifact.

Every input row comes out exactly once, in input order, as `ok`, `failed` or `invalid_input`.
The flow's parameters are JSON (the `gristmill batch` options), so its deployment runs from the
UI and `prefect deployment run`; `settings`, `engine` and `on_progress` are keyword-only
overrides for the CLI and tests, never set by a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from tasks.batch.dispatch import process_row_batch, row_batches
from tasks.batch.engines.protocol import RowEngine
from tasks.batch.job import RecordJob, load_schema, load_template
from tasks.batch.journal import PreviousOutput, RowJournal
from tasks.batch.plan import build_row_engine
from tasks.batch.quality import (
    OutputLedger,
    check_input_records,
    check_input_rows,
    check_output_records,
    load_expectation_suite,
)
from tasks.batch.reading import RecordReader, iter_row_chunks, preflight, record_format
from tasks.batch.report import BatchReport, batch_report_markdown
from tasks.batch.results import RowResult, failed_result, invalid_result
from tasks.batch.writing import (
    RecordWriter,
    dead_letter_entry,
    dead_letter_path,
    output_columns,
    output_record,
)
from tasks.errors import GristmillError, RunFailed, UsageError
from tasks.llm import Usage
from tasks.reporting import tag_flow_run
from tasks.settings import Settings

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

REPORT_ARTIFACT_KEY = "process-records-report"
PROGRESS_ARTIFACT_KEY = "process-records-progress"
ProgressCallback = Callable[[int, int], None]

# The flow parameters that build the job (`record_job`), and those that override a setting for
# one run (`run_settings`), with that setting's name.
JOB_PARAMETERS = (
    "template",
    "task",
    "labels",
    "schema",
    "system",
    "id_column",
    "text_column",
    "max_chars",
)
SETTING_PARAMETERS = {
    "model": "llm_model",
    "temperature": "llm_temperature",
    "concurrency": "batch_concurrency",
    "rpm": "batch_rpm",
    "tpm": "batch_tpm",
}


def run_settings(settings: Settings, **parameters: Any) -> Settings:
    """`settings` with the run's overrides (model, temperature, concurrency, rpm, tpm) applied,
    checked against the settings' own bounds."""
    updated = settings.model_copy()
    for parameter, value in parameters.items():
        if value is None:
            continue
        try:
            Settings.__pydantic_validator__.validate_assignment(
                updated, SETTING_PARAMETERS[parameter], value
            )
        except ValidationError as exc:
            raise UsageError(f"{parameter}: {exc.errors()[0]['msg']}, not {value!r}") from None
    return updated


def record_job(
    settings: Settings,
    *,
    template: str | None = None,
    task: str | None = None,
    labels: list[str] | str | None = None,
    schema: str | None = None,
    system: str | None = None,
    id_column: str | None = None,
    text_column: str = "text",
    max_chars: int = 100_000,
) -> RecordJob:
    """What to do with every row, from the run's parameters (a usage error if inconsistent).

    `template` and `schema` are file paths or the text itself; `labels` a list or a
    comma-separated string; model and temperature come from `settings`.
    """
    if isinstance(labels, str):
        labels = labels.split(",")
    return RecordJob(
        template=load_template(template) if template is not None else None,
        task=task,
        system=system,
        schema=load_schema(schema),
        model=settings.llm_model,
        temperature=settings.llm_temperature,
        labels=[label.strip() for label in labels or [] if label.strip()],
        text_column=text_column,
        id_column=id_column,
        max_chars=max_chars,
    )


def _run_name() -> str:
    return f"batch {Path(str(flow_run.parameters.get('input_path', 'records'))).name}"


@flow(
    name="process-records",
    flow_run_name=_run_name,
    description="Run every row of a table through a prompt template or a built-in task.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=False,
)
def process_records(
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
    *,
    settings: Settings | None = None,
    engine: RowEngine | None = None,
    on_progress: ProgressCallback | None = None,
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
        settings: Override of the settings read from the environment (CLI and tests).
        engine: A row engine built for the same job (CLI and tests); default: built from
            the settings.
        on_progress: Called with (rows done, rows expected) after each batch (CLI).
    """
    started = time.monotonic()
    logger = get_run_logger()
    source, out = Path(input_path), Path(output_path)
    built_engine = engine is None
    try:
        settings = run_settings(
            settings or Settings(),
            model=model,
            temperature=temperature,
            concurrency=concurrency,
            rpm=rpm,
            tpm=tpm,
        )
        job = record_job(
            settings,
            template=template,
            task=task,
            labels=labels,
            schema=schema,
            system=system,
            id_column=id_column,
            text_column=text_column,
            max_chars=max_chars,
        )
        if out.resolve() == source.resolve():
            raise UsageError("output_path must not be the input file")
        record_format(out)  # an output format we cannot write fails now, not after the work
        reader = preflight(source, job)
        user_suite = load_expectation_suite(Path(expectations_path)) if expectations_path else None
        input_suite = (
            load_expectation_suite(Path(input_expectations_path), "--input-expectations")
            if input_expectations_path
            else None
        )
        engine = engine or build_row_engine(settings, job, mode, poll_interval_s=poll_interval_s)
    except GristmillError as exc:
        # the Failed state's message carries the reason to the UI; logged at INFO so the
        # terminal does not print it twice beside the CLI's one line
        logger.info("cannot start: %s", exc)
        return Failed(message=str(exc), data=exc)
    tag_flow_run("pipeline:batch", f"engine:{engine.name}")
    try:
        report = _process(
            source,
            out,
            reader,
            job,
            engine,
            settings,
            mode=mode,
            retry_failed=retry_failed,
            user_suite=user_suite,
            input_suite=input_suite,
            chunk_rows=chunk_rows,
            on_progress=on_progress,
            started=started,
        )
    except GristmillError as exc:
        # the output cannot be written, a Batch API job was refused, ...: the reason in words,
        # as a Failed state, instead of a traceback on the terminal
        logger.info("stopped: %s", exc)
        return Failed(message=str(exc), data=exc)
    finally:
        close = getattr(engine, "close", None)
        if built_engine and close is not None:
            close()
    logger.info(report.headline())
    if not report.success:
        message = "; ".join([report.headline(), *report.failures[:3], *report.quality_errors[:3]])
        return Failed(message=message, data=RunFailed(message, report=report))
    return Completed(message=report.headline(), data=report)


def _process(
    source: Path,
    out: Path,
    reader: RecordReader,
    job: RecordJob,
    engine: RowEngine,
    settings: Settings,
    *,
    mode: str,
    retry_failed: bool,
    user_suite: list[Expectation] | None,
    input_suite: list[Expectation] | None,
    chunk_rows: int | None,
    on_progress: ProgressCallback | None,
    started: float,
) -> BatchReport:
    """The run itself, inside the flow: every row once, written atomically, then the report."""
    columns = reader.columns
    total = reader.estimate_rows()
    rows_per_task = settings.batch_rows_per_task
    journal = RowJournal.for_job(settings.batch_dir, job) if engine.journaled else None
    previous = PreviousOutput(out) if retry_failed else None
    progress_id = cast(
        UUID,
        create_progress_artifact(
            progress=0.0, key=PROGRESS_ARTIFACT_KEY, description=f"{source.name}: rows processed"
        ),
    )
    get_run_logger().info("%s: ~%d rows with %s (%s)", source, total, engine.name, engine.model)

    writer = RecordWriter(out, output_columns(job, columns), input_schema=reader.arrow_schema)
    ledger = OutputLedger()
    quality: dict[str, str] = {}
    quality_errors: list[str] = []
    outcomes: list[RowResult] = []
    done = 0
    try:
        for rows in iter_row_chunks(reader, job, chunk_rows or max(1000, rows_per_task * 10)):
            input_check = check_input_rows(rows, job)
            quality["input"] = input_check.summary_line()
            if not input_check.success:
                quality_errors.append(input_check.reason())
            if input_suite:
                user_input, flagged = check_input_records(rows, input_suite)
                quality["user-input"] = user_input.summary_line()
                if not user_input.success:
                    quality_errors.append(user_input.reason())
                for row in rows:
                    if row.problem is None and row.number in flagged:
                        row.problem = flagged[row.number]
            results: dict[int, RowResult] = {}
            todo = []
            for row in rows:
                kept = previous.take(row) if previous is not None else None
                if kept is not None:
                    results[row.number] = kept
                elif row.problem is not None:
                    results[row.number] = invalid_result(row)
                else:
                    todo.append(row)
            done += len(rows) - len(todo)
            futures = [
                (
                    batch,
                    process_row_batch.submit(
                        batch,
                        engine,
                        journal,
                        name=f"{source.name} rows {batch[0].number}-{batch[-1].number}",
                    ),
                )
                for batch in row_batches(todo, rows_per_task)
            ]
            for batch, future in futures:
                try:
                    batch_results = future.result()
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    batch_results = [failed_result(row, reason) for row in batch]
                results.update((r.number, r) for r in batch_results)
                done += len(batch)
                percent = 100.0 * done / max(total, done, 1)
                update_progress_artifact(progress_id, min(percent, 100.0))
                if on_progress is not None:
                    on_progress(done, max(total, done))
            records = [output_record(r, results[r.number], job, columns) for r in rows]
            dead = [
                dead_letter_entry(r, results[r.number])
                for r in rows
                if results[r.number].status != "ok"
            ]
            writer.write(records, dead)
            for row in rows:
                result = results[row.number]
                ledger.add(result, job)
                outcomes.append(result.model_copy(update={"result": None, "record": None}))
            if user_suite:
                user_check = check_output_records(records, user_suite)
                quality["user"] = user_check.summary_line()
                if not user_check.success:
                    quality_errors.append(user_check.reason())
        output_check = ledger.check(len(outcomes))
        quality["output"] = output_check.summary_line()
        if not output_check.success:
            quality_errors.append(output_check.reason())
    except BaseException:
        writer.abort()
        raise
    finally:
        if journal is not None:
            journal.close()
    writer.commit()
    update_progress_artifact(progress_id, 100.0)

    fresh = [o for o in outcomes if not o.reused]
    usage = Usage(
        calls=sum(o.calls for o in fresh),
        prompt_tokens=sum(o.prompt_tokens for o in fresh),
        completion_tokens=sum(o.completion_tokens for o in fresh),
        cost_usd=round(sum(o.cost_usd for o in fresh), 8),
    )
    duration = time.monotonic() - started
    limiter = getattr(engine, "limiter", None)
    report = BatchReport(
        input=str(source),
        output=str(out),
        dead_letter=str(dead_letter_path(out)) if writer.dead_letters else None,
        mode=mode,
        engine=engine.name,
        model=engine.model,
        rows=len(outcomes),
        ok=sum(o.status == "ok" for o in outcomes),
        failed=sum(o.status == "failed" for o in outcomes),
        invalid_input=sum(o.status == "invalid_input" for o in outcomes),
        reused=sum(o.reused for o in outcomes),
        llm_calls=usage.calls,
        usage=usage,
        duration_s=round(duration, 3),
        rows_per_s=round(len(outcomes) / duration, 2) if duration > 0 else 0.0,
        rate_limit_pauses=getattr(limiter, "pauses", 0),
        paused_s=round(getattr(limiter, "paused_s", 0.0), 2),
        quality=list(quality.values()),
        quality_errors=quality_errors[:10],
        failures=[
            f"row {o.number} ({o.row_id}): {o.status}: {o.error}"
            for o in outcomes
            if o.status != "ok"
        ][:10],
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=batch_report_markdown(report),
        description=report.headline(),
    )
    return report
