"""Data-quality gates with great-expectations (1.x, ephemeral context, pandas frames).

Every pipeline builds a table at each stage (utterances, chunks, summaries, documents, records)
and validates it against a suite defined here. Expectations carry GX's own `severity`:
`critical` failures stop that item with the failed expectations as its reason; `warning`
failures are reported in the run's artifact and log. To add a check, add an expectation to the
suite function for that stage.

great_expectations takes ~5 s to import, so it is imported only when a suite first runs, or
earlier in the background (`preload`) by a command that will need it.
"""

from __future__ import annotations

import atexit
import re
import threading
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tasks.errors import DataQualityError

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation
    from great_expectations.expectations.metadata_types import FailureSeverity

_lock = threading.Lock()
_preload_lock = threading.Lock()
_preloading: threading.Thread | None = None  # `preload`'s one thread per process


class ExpectationOutcome(BaseModel):
    """One expectation's verdict on one table."""

    expectation: str
    description: str | None = None
    """What failing rows are, in words (our suites set it; a user's suite may not)."""
    column: str | None = None
    severity: str
    success: bool
    observed: str = ""
    unexpected_count: int | None = None
    examples: list[str] = Field(default_factory=list)
    unexpected_rows: list[int] = Field(default_factory=list)
    """Positions of the failing rows, when validated with `result_format="COMPLETE"`."""

    def describe(self) -> str:
        """In words when the expectation has a description ("utterances longer than 20,000
        characters: 1"), else by its GX name and column (a user's own suite)."""
        if self.description:
            what = self.description
            if self.unexpected_count:
                what += f": {self.unexpected_count}"
            elif self.observed:
                what += f" (observed {self.observed})"
            shown = [repr(e) for e in self.examples[:3] if e.strip()]
            return what + (f", e.g. {', '.join(shown)}" if shown else "")
        where = f"{self.column}: " if self.column else ""
        detail = f" (observed {self.observed})" if self.observed else ""
        if self.unexpected_count:
            detail += f", {self.unexpected_count} bad rows"
            if self.examples:
                detail += f", e.g. {', '.join(self.examples[:3])}"
        return f"{where}{self.expectation}{detail}"


_WARNINGS = re.compile(r", (\d+) warnings\)$")  # as summary_line() writes them


class QualityReport(BaseModel):
    """A suite's verdict on one table: passed unless a critical expectation failed."""

    suite: str
    rows: int
    success: bool
    evaluated: int
    errors: list[ExpectationOutcome] = Field(default_factory=list)
    warnings: list[ExpectationOutcome] = Field(default_factory=list)

    def summary_line(self) -> str:
        state = "passed" if self.success else "FAILED"
        line = f"{self.suite}: {state} ({self.evaluated} checks on {self.rows} rows"
        if self.warnings:
            line += f", {len(self.warnings)} warnings"
        return line + ")"

    @staticmethod
    def verdict(summary_lines: list[str]) -> str:
        """A few words for a table cell from several suites' `summary_line()`s (the lines
        themselves go below the table: they are too long for a cell that does not wrap)."""
        failed = [line.split(":", 1)[0] for line in summary_lines if ": FAILED (" in line]
        if failed:
            return "failed: " + ", ".join(failed)
        warned = sum(int(m.group(1)) for m in map(_WARNINGS.search, summary_lines) if m)
        if not summary_lines:
            return "-"
        return f"passed, {warned} warnings" if warned else "passed"

    def reason(self) -> str:
        """The failed critical expectations, in words."""
        return f"data quality ({self.suite}): " + "; ".join(e.describe() for e in self.errors)

    def raise_for_errors(self) -> QualityReport:
        if not self.success:
            raise DataQualityError(self.reason(), failed=[e.model_dump() for e in self.errors])
        return self


@lru_cache(maxsize=1)
def _context() -> AbstractDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def preload() -> threading.Thread:
    """Import great_expectations and build its context in a background thread, so that its
    ~5 s overlap a run's set-up and the first check finds them ready (once per process: a
    second call returns the first call's thread). The process waits for it before it exits: a
    daemon thread still importing at interpreter shutdown can abort it."""
    global _preloading
    with _preload_lock:
        if _preloading is None:
            _preloading = threading.Thread(target=_warm, name="gristmill-gx-preload", daemon=True)
            _preloading.start()
            atexit.register(_preloading.join)
        return _preloading


def _warm() -> None:
    try:
        with _lock:
            _context()
    except Exception:  # the first check imports it again and reports what is wrong
        return


@cache
def _data_source() -> Any:
    return _context().data_sources.add_or_update_pandas(name="gristmill")


@cache
def _batch_definition(suite: str) -> Any:
    """One dataframe asset per suite, made once: each add or delete of a data source or asset
    re-serialises the context's YAML config, a quarter of a validation's time when it was done
    per call (profiled on the 1,230-row utterance table). Callers hold `_lock`."""
    asset = _data_source().add_dataframe_asset(name=suite)
    return asset.add_batch_definition_whole_dataframe("all")


def validate_table(
    frame: pd.DataFrame,
    suite: str,
    expectations: list[Expectation],
    *,
    result_format: Literal["SUMMARY", "COMPLETE"] = "SUMMARY",
) -> QualityReport:
    """Validate `frame` against `expectations` (a named suite) and collect the verdicts.

    With `result_format="COMPLETE"` each failed column expectation also lists the positions of
    its failing rows (`unexpected_rows`; `frame` must have a default RangeIndex).
    """
    import great_expectations as gx

    with _lock:
        batch = _batch_definition(suite).get_batch(batch_parameters={"dataframe": frame})
        expectation_suite = gx.ExpectationSuite(
            name=suite, expectations=[e.copy() for e in expectations]
        )
        result = batch.validate(expectation_suite, result_format=result_format)
    errors: list[ExpectationOutcome] = []
    warnings: list[ExpectationOutcome] = []
    for item in result.results:
        config = item.expectation_config
        if config is None or item.success:
            continue
        outcome = _outcome(config, item.result or {}, bool(item.success), item.exception_info)
        (warnings if outcome.severity in {"warning", "info"} else errors).append(outcome)
    return QualityReport(
        suite=suite,
        rows=len(frame),
        success=not errors,
        evaluated=len(result.results),
        errors=errors,
        warnings=warnings,
    )


def _outcome(config: Any, result: dict[str, Any], success: bool, exc: Any) -> ExpectationOutcome:
    severity = getattr(config, "severity", None)
    severity_name = getattr(severity, "value", severity) or "critical"
    observed = result.get("observed_value")
    examples = [str(v)[:60] for v in (result.get("partial_unexpected_list") or [])[:3]]
    rows = [i for i in result.get("unexpected_index_list") or [] if isinstance(i, int)]
    if exc and isinstance(exc, dict) and exc.get("raised_exception"):
        observed = f"error: {str(exc.get('exception_message'))[:120]}"
    return ExpectationOutcome(
        expectation=config.type,
        description=getattr(config, "description", None),
        column=config.kwargs.get("column") or config.kwargs.get("column_A"),
        severity=str(severity_name),
        success=success,
        observed="" if observed is None else str(observed)[:120],
        unexpected_count=result.get("unexpected_count"),
        examples=examples,
        unexpected_rows=rows,
    )


def _warning() -> FailureSeverity:
    """GX's warning severity: reported, never stops an item."""
    from great_expectations.expectations.metadata_types import FailureSeverity

    return FailureSeverity.WARNING


def _utterance_checks() -> list[Expectation]:
    """What every utterance table must hold, of one transcript or of many: rows, text of some
    length; and, as warnings, not overly long text and a speaker on most utterances."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1, description="no utterances"),
        e.ExpectColumnValuesToNotBeNull(column="text", description="utterances without text"),
        e.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=1, description="empty utterances"
        ),
        e.ExpectColumnValueLengthsToBeBetween(
            column="text",
            max_value=20_000,
            severity=_warning(),
            description="utterances longer than 20,000 characters",
        ),
        e.ExpectColumnProportionOfNonNullValuesToBeBetween(
            column="speaker",
            min_value=0.5,
            severity=_warning(),
            description="a share of utterances with a speaker below one half",
        ),
    ]


def utterance_expectations() -> list[Expectation]:
    """Suite for the parsed utterance table of one transcript."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *_utterance_checks(),
        e.ExpectColumnValuesToBeUnique(column="index", description="utterances numbered twice"),
        e.ExpectColumnValuesToBeIncreasing(
            column="index", strictly=True, description="utterances out of order"
        ),
    ]


def grouped_utterance_expectations() -> list[Expectation]:
    """`utterance_expectations` for the utterances of many transcripts in one table.

    Per transcript, `step` is the index minus the previous index (the first row's: index + 1),
    so "1 everywhere" says what unique, increasing and 0-based say for one transcript.
    """
    import great_expectations as gx

    e = gx.expectations
    return [
        *_utterance_checks(),
        e.ExpectColumnValuesToBeBetween(
            column="step", min_value=1, max_value=1, description="utterances out of order"
        ),
    ]


def _chunk_basics(id_column: str, max_tokens: int) -> list[Expectation]:
    """What every chunk table holds, of transcripts or of documents: rows, unique ids (in
    `id_column`) and 1 to `max_tokens` tokens a chunk."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1, description="no chunks"),
        e.ExpectColumnValuesToBeUnique(column=id_column, description="chunk ids used twice"),
        e.ExpectColumnValuesToBeBetween(
            column="token_count",
            min_value=1,
            max_value=max_tokens,
            description=f"chunks outside 1-{max_tokens:,} tokens",
        ),
    ]


def _chunk_checks(max_tokens: int) -> list[Expectation]:
    """What every transcript chunk table must hold, of one transcript or of many: rows, unique
    ids, token bounds, and no chunk starting after the utterance its predecessor allows."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *_chunk_basics("chunk_id", max_tokens),
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="next_allowed_start",
            column_B="first_utterance",
            or_equal=True,
            description="chunks that leave utterances out after the previous chunk",
        ),
    ]


def chunk_expectations(max_tokens: int, utterance_count: int) -> list[Expectation]:
    """Suite for the chunk table: token bounds, full coverage of utterances, unique ids."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *_chunk_checks(max_tokens),
        # coverage: the first chunk starts at utterance 0, the last ends at the last utterance
        e.ExpectColumnMinToBeBetween(
            column="first_utterance",
            min_value=0,
            max_value=0,
            description="chunks that do not start at the first utterance",
        ),
        e.ExpectColumnMaxToBeBetween(
            column="last_utterance",
            min_value=utterance_count - 1,
            max_value=utterance_count - 1,
            description="chunks that do not reach the last utterance",
        ),
    ]


def grouped_chunk_expectations(max_tokens: int) -> list[Expectation]:
    """`chunk_expectations` for the chunks of many transcripts in one table, row by row:
    `past_end` (last utterance minus the transcript's last) is never above 0, and
    `uncovered_tail` (utterances after a transcript's last chunk) is 0."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *_chunk_checks(max_tokens),
        e.ExpectColumnValuesToBeBetween(
            column="first_utterance", min_value=0, description="chunks before the first utterance"
        ),
        e.ExpectColumnValuesToBeBetween(
            column="past_end", max_value=0, description="chunks past the transcript's end"
        ),
        e.ExpectColumnValuesToBeBetween(
            column="uncovered_tail",
            min_value=0,
            max_value=0,
            description="transcripts whose last utterances no chunk covers",
        ),
    ]


def summary_expectations() -> list[Expectation]:
    """Suite for the summaries table before outputs are written."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="summary", description="missing summaries"),
        e.ExpectColumnValueLengthsToBeBetween(
            column="summary",
            min_value=20,
            max_value=20_000,
            description="summaries shorter than 20 or longer than 20,000 characters",
        ),
        e.ExpectColumnValuesToBeBetween(
            column="action_items_without_description",
            max_value=0,
            description="action items without a description",
        ),
        e.ExpectColumnValuesToBeBetween(
            column="chunk_count", min_value=1, description="summaries of no chunk"
        ),
        e.ExpectColumnValueLengthsToBeBetween(
            column="summary",
            min_value=200,
            severity=_warning(),
            description="summaries shorter than 200 characters",
        ),
        e.ExpectColumnValuesToBeBetween(
            column="key_point_count",
            min_value=1,
            severity=_warning(),
            description="summaries without key points",
        ),
        e.ExpectColumnValuesToBeBetween(
            column="participant_count",
            min_value=1,
            severity=_warning(),
            description="summaries that name no participant",
        ),
    ]


def record_input_expectations(
    required_columns: list[str], min_chars: int, max_chars: int
) -> list[Expectation]:
    """Suite for one chunk of batch input rows (ids and the text sent to the model).

    Missing columns are critical (the run cannot start); rows with no id, a repeated id or a
    text outside the bounds are warnings here because those rows already end `invalid_input`.
    """
    import great_expectations as gx
    from great_expectations.expectations.metadata_types import FailureSeverity

    e = gx.expectations
    return [
        *(
            e.ExpectColumnToExist(column=column, description=f"no column {column!r}")
            for column in required_columns
        ),
        e.ExpectColumnValuesToNotBeNull(
            column="row_id", severity=FailureSeverity.WARNING, description="rows without an id"
        ),
        e.ExpectColumnValuesToBeUnique(
            column="row_id",
            severity=FailureSeverity.WARNING,
            description="ids used by more than one row",
        ),
        e.ExpectColumnValuesToBeBetween(
            column="text_chars",
            min_value=min_chars,
            max_value=max_chars,
            severity=FailureSeverity.WARNING,
            description=f"texts outside {min_chars:,}-{max_chars:,} characters",
        ),
    ]


def record_output_expectations(input_rows: int, statuses: list[str]) -> list[Expectation]:
    """Suite for the batch output ledger: every input row exactly once, known statuses,
    unique ids among usable rows, schema-valid results for `ok` rows."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToEqual(
            value=input_rows,
            description=f"not one output row for each of the {input_rows:,} input rows",
        ),
        e.ExpectColumnValuesToBeUnique(column="row_number", description="input rows written twice"),
        e.ExpectColumnValuesToNotBeNull(column="row_id", description="output rows without an id"),
        e.ExpectColumnValuesToBeInSet(
            column="status", value_set=statuses, description="rows with an unknown status"
        ),
        e.ExpectColumnValuesToBeUnique(
            column="row_id",
            row_condition='status!="invalid_input"',
            condition_parser="pandas",
            description="ids written twice",
        ),
        e.ExpectColumnValuesToBeInSet(
            column="result_valid", value_set=[True], description="results that break the schema"
        ),
    ]


def document_expectations(max_chars: int = 5_000_000) -> list[Expectation]:
    """Suite for a batch of loaded documents: text extracted, within size limits, unique sources."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="source", description="documents without a source"),
        e.ExpectColumnValuesToBeUnique(column="source", description="documents listed twice"),
        e.ExpectColumnValuesToBeBetween(
            column="chars",
            min_value=1,
            max_value=max_chars,
            description=f"documents with no text or over {max_chars:,} characters",
        ),
        e.ExpectColumnValuesToNotBeNull(
            column="document_hash", description="documents without a content hash"
        ),
        e.ExpectColumnValuesToBeBetween(
            column="chars",
            min_value=20,
            severity=_warning(),
            description="documents shorter than 20 characters",
        ),
    ]


def doc_chunk_expectations(max_tokens: int) -> list[Expectation]:
    """Suite for a batch of document chunks: token bounds, unique ids, metadata, no empty text."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *_chunk_basics("id", max_tokens),
        *(
            e.ExpectColumnValuesToNotBeNull(column=column, description=f"chunks without {column}")
            for column in ("source", "content_hash", "document_hash", "chunk_index")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="body_chars", min_value=1, description="chunks with no text"
        ),
        e.ExpectColumnValuesToBeBetween(
            column="body_chars",
            min_value=10,
            severity=_warning(),
            description="chunks shorter than 10 characters",
        ),
    ]
