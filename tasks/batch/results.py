"""The end of every row: `ok`, `failed` or `invalid_input`, with its tokens and cost."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tasks.batch.reading import Row
from tasks.errors import LLMError, UsageError
from tasks.llm import Usage

RowStatus = Literal["ok", "failed", "invalid_input"]
ROW_STATUSES: tuple[str, ...] = ("ok", "failed", "invalid_input")


class RowResult(BaseModel):
    """The end of one row."""

    number: int
    row_id: str
    status: RowStatus
    result: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    calls: int = 0
    cost_usd: float = 0.0
    reused: bool = False
    """Taken from the journal or the previous output."""
    record: dict[str, Any] | None = None
    """A previous output record kept as it was (--retry-failed)."""

    @property
    def usage(self) -> Usage:
        return Usage(
            calls=self.calls,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
        )

    def outcome(self) -> RowResult:
        """This result without its values: what the report needs of a row."""
        return self.model_copy(update={"result": None, "record": None})


def invalid_result(row: Row) -> RowResult:
    return RowResult(
        number=row.number, row_id=row.row_id, status="invalid_input", error=row.problem
    )


def failed_result(row: Row, reason: str, usage: Usage | None = None, model: str = "") -> RowResult:
    return RowResult(
        number=row.number,
        row_id=row.row_id,
        status="failed",
        error=reason,
        model=model or None,
        **_spent(usage or Usage()),
    )


def ok_result(row: Row, value: Any, usage: Usage, model: str) -> RowResult:
    return RowResult(
        number=row.number,
        row_id=row.row_id,
        status="ok",
        result=value,
        model=model,
        **_spent(usage),
    )


def reused_result(row: Row, **fields: Any) -> RowResult:
    """An `ok` result from an earlier run (the journal, or the previous output): paid for then."""
    return RowResult(number=row.number, row_id=row.row_id, status="ok", reused=True, **fields)


def _spent(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "calls": usage.calls,
        "cost_usd": usage.cost_usd,
    }


def failure_reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LLMError | UsageError) else f"{type(exc).__name__}: {exc}"
