"""Rows through an engine, a batch of rows per Prefect task, finished rows from the journal."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch.engines.protocol import RowEngine
from tasks.batch.journal import PreviousOutput, RowJournal
from tasks.batch.reading import Row
from tasks.batch.results import RowResult, failed_result, failure_reason, invalid_result


def settle_known_rows(
    rows: list[Row], previous: PreviousOutput | None
) -> tuple[dict[int, RowResult], list[Row]]:
    """The results known without the engine, by row number (kept from the previous output, or
    `invalid_input`), and the rows left to send."""
    results: dict[int, RowResult] = {}
    todo: list[Row] = []
    for row in rows:
        kept = previous.take(row) if previous is not None else None
        if kept is not None:
            results[row.number] = kept
        elif row.problem is not None:
            results[row.number] = invalid_result(row)
        else:
            todo.append(row)
    return results, todo


def run_row_batch(
    rows: list[Row], engine: RowEngine, journal: RowJournal | None
) -> list[RowResult]:
    """Results for a batch of usable rows: journal hits reused, the rest sent to the engine."""
    results: dict[int, RowResult] = {}
    todo: list[Row] = []
    for row in rows:
        hit = journal.get(row) if journal is not None else None
        if hit is not None:
            results[row.number] = hit
        else:
            todo.append(row)

    def done(row: Row, result: RowResult) -> None:
        if journal is not None:
            journal.add(row, result)

    if todo:
        try:
            for result in engine.process(todo, done):
                results[result.number] = result
        except Exception as exc:
            for row in todo:
                results.setdefault(row.number, failed_result(row, failure_reason(exc)))
    return [results[row.number] for row in rows]


@task(task_run_name="{name}", cache_policy=NO_CACHE)
def process_row_batch(
    rows: list[Row], engine: RowEngine, journal: RowJournal | None, name: str
) -> list[RowResult]:
    """One batch of rows through the engine (resumable per row through the journal)."""
    return run_row_batch(rows, engine, journal)


def row_batches(rows: list[Row], size: int) -> list[list[Row]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]
