"""What every row engine does: turn usable rows into results, reporting each as it finishes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tasks.batch.reading import Row
from tasks.batch.results import RowResult

if TYPE_CHECKING:
    from tasks.settings import ModelPrice


RowCallback = Callable[[Row, RowResult], None]


@runtime_checkable
class RowEngine(Protocol):
    """Turns usable rows into results; calls `on_done` as each row finishes."""

    name: str
    model: str
    journaled: bool

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]: ...


def call_cost(price: ModelPrice | None, prompt: int, completion: int, factor: float = 1.0) -> float:
    if price is None:
        return 0.0
    return round((prompt * price.input + completion * price.output) * factor / 1e6, 8)
