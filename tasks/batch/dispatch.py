"""Rows through an engine, a batch of rows per Prefect task, finished rows from the journal."""

from __future__ import annotations

from collections.abc import Callable

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

    def known(row: Row) -> RowResult | None:
        kept = previous.take(row) if previous is not None else None
        if kept is None and row.problem is not None:
            return invalid_result(row)
        return kept

    return split_known(rows, known)


def split_known(
    rows: list[Row], known: Callable[[Row], RowResult | None]
) -> tuple[dict[int, RowResult], list[Row]]:
    """The rows `known` has a result for (the results by row number) and the rest, in order."""
    results: dict[int, RowResult] = {}
    todo: list[Row] = []
    for row in rows:
        result = known(row)
        if result is not None:
            results[row.number] = result
        else:
            todo.append(row)
    return results, todo


def run_row_batch(
    rows: list[Row], engine: RowEngine, journal: RowJournal | None
) -> list[RowResult]:
    """Results for a batch of usable rows: journal hits reused, the rest sent to the engine."""
    results, todo = split_known(rows, journal.get if journal is not None else lambda row: None)

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
