"""What every row engine does: turn usable rows into results, reporting each as it finishes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tasks.batch.limits import RateLimiter
from tasks.batch.reading import Row
from tasks.batch.results import RowResult

RowCallback = Callable[[Row, RowResult], None]


@runtime_checkable
class RowEngine(Protocol):
    """Turns usable rows into results; calls `on_done` as each row finishes."""

    name: str
    model: str
    journaled: bool
    """Its `ok` rows go into the resume journal (paid-for results)."""
    whole_job: bool
    """`process` takes every pending row of the job in one call (the Batch API: one submission,
    one wait), not a task's worth at a time."""

    @property
    def limiter(self) -> RateLimiter | None:
        """The run's shared rate limiter, whose pauses the report counts; None without one."""
        ...

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]: ...

    def close(self) -> None:
        """Free what the engine holds (its threads); the run is over."""
        ...
