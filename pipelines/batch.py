"""Flow `process_records`: a table of records through a prompt (or a built-in task).

read the input in chunks -> screen rows (ids, template, text length; unusable rows end
`invalid_input`) + input suite -> batches of rows as tasks, sharing the engine's rate limiter
(rows already done come from the journal or, with --retry-failed, from the previous output)
-> write output and dead-letter rows atomically -> output suite -> report artifact.

Every input row comes out exactly once, in input order, as `ok`, `failed` or `invalid_input`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.llm import Usage
from tasks.records import (
    BatchReport,
    OutputLedger,
    PreviousOutput,
    RecordJob,
    RecordWriter,
    RowEngine,
    RowJournal,
    RowResult,
    batch_report_markdown,
    check_input_rows,
    check_output_records,
    dead_letter_entry,
    dead_letter_path,
    failed_result,
    invalid_result,
    iter_row_chunks,
    load_expectation_suite,
    output_columns,
    output_record,
    preflight,
    process_row_batch,
    row_batches,
)
from tasks.settings import Settings

REPORT_ARTIFACT_KEY = "process-records-report"
PROGRESS_ARTIFACT_KEY = "process-records-progress"
ProgressCallback = Callable[[int, int], None]


def _run_name() -> str:
    return f"batch {Path(str(flow_run.parameters.get('input_path', 'records'))).name}"


@flow(
    name="process-records",
    flow_run_name=_run_name,
    description="Run every row of a table through a prompt or a built-in task.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=False,
)
def process_records(
    input_path: str,
    output_path: str,
    job: RecordJob,
    engine: RowEngine,
    settings: Settings | None = None,
    mode: str = "online",
    retry_failed: bool = False,
    expectations_path: str | None = None,
    chunk_rows: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> State:
    """Process `input_path` into `output_path`; a Failed state when any row is not ok."""
    started = time.monotonic()
    logger = get_run_logger()
    settings = settings or Settings.model_validate({})
    source, out = Path(input_path), Path(output_path)
    reader = preflight(source, job)
    columns = reader.columns
    total = reader.estimate_rows()
    rows_per_task = settings.batch_rows_per_task
    journal = RowJournal.for_job(settings.batch_dir, job) if engine.journaled else None
    previous = PreviousOutput(out) if retry_failed else None
    user_suite = load_expectation_suite(Path(expectations_path)) if expectations_path else None
    progress_id = cast(
        UUID,
        create_progress_artifact(
            progress=0.0, key=PROGRESS_ARTIFACT_KEY, description=f"{source.name}: rows processed"
        ),
    )
    logger.info("%s: ~%d rows with %s (%s)", source, total, engine.name, engine.model)

    writer = RecordWriter(out, output_columns(job, columns), input_schema=reader.arrow_schema)
    ledger = OutputLedger()
    quality: dict[str, str] = {}
    quality_errors: list[str] = []
    outcomes: list[RowResult] = []
    done = 0
    try:
        with tags("pipeline:batch", f"engine:{engine.name}"):
            for rows in iter_row_chunks(reader, job, chunk_rows or max(1000, rows_per_task * 10)):
                input_check = check_input_rows(rows, job)
                quality["input"] = input_check.summary_line()
                if not input_check.success:
                    quality_errors.append(input_check.reason())
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
    logger.info(report.headline())
    if not report.success:
        return Failed(message=report.headline(), data=report)
    return Completed(message=report.headline(), data=report)
