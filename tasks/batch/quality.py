"""Data-quality gates of a batch run: the built-in input and output suites and the user's own."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.batch.job import RecordJob
from tasks.batch.reading import Row
from tasks.batch.results import ROW_STATUSES, RowResult
from tasks.batch.writing import cell_text
from tasks.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.expectations import Expectation

    from tasks.quality import QualityReport


def input_quality_frame(rows: list[Row], job: RecordJob) -> pd.DataFrame:
    """The table the input suite checks: required columns, row ids and text lengths."""
    import pandas as pd

    data: dict[str, list[Any]] = {
        c: [cell_text(r.values.get(c)) for r in rows] for c in job.required_columns()
    }
    data["row_id"] = [None if r.row_id.startswith("missing-") else r.row_id for r in rows]
    data["text_chars"] = [len(r.text.strip()) for r in rows]
    return pd.DataFrame(data)


def check_input_rows(rows: list[Row], job: RecordJob) -> QualityReport:
    """The input suite on one chunk (rows that fail it are already `invalid_input`)."""
    from tasks.quality import record_input_expectations, validate_table

    expectations = record_input_expectations(job.required_columns(), job.min_chars, job.max_chars)
    return validate_table(input_quality_frame(rows, job), "record-input", expectations)


@dataclass
class OutputLedger:
    """One narrow line per written row, for the output suite (every input row exactly once)."""

    numbers: list[int] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)

    def add(self, result: RowResult, job: RecordJob) -> None:
        self.numbers.append(result.number)
        self.row_ids.append(result.row_id)
        self.statuses.append(result.status)
        ok_valid = True
        if result.status == "ok" and result.record is None and job.schema is not None:
            ok_valid = job.schema.is_valid(result.result)
        self.valid.append(ok_valid)

    def check(self, input_rows: int) -> QualityReport:
        import pandas as pd

        from tasks.quality import record_output_expectations, validate_table

        frame = pd.DataFrame(
            {
                "row_number": self.numbers,
                "row_id": self.row_ids,
                "status": self.statuses,
                "result_valid": self.valid,
            }
        )
        return validate_table(
            frame, "record-output", record_output_expectations(input_rows, list(ROW_STATUSES))
        )


def load_expectation_suite(path: Path, option: str = "--expectations") -> list[Expectation]:
    """A GX ExpectationSuite JSON file (as `suite.to_json_dict()` writes it)."""
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        configs = data["expectations"] if isinstance(data, dict) else data
        keep = ("type", "kwargs", "meta", "severity")
        return [
            ExpectationConfiguration(**{k: v for k, v in c.items() if k in keep}).to_domain_obj()
            for c in configs
        ]
    except Exception as exc:
        raise UsageError(f"{option} {path}: not a GX expectation suite: {exc}") from None


def check_input_records(
    rows: list[Row], expectations: list[Expectation]
) -> tuple[QualityReport, dict[int, str]]:
    """The user's input suite (--input-expectations) on one chunk of rows, before any LLM call.

    Returns the verdict and, by row number, why a row is `invalid_input`: each row a failed
    critical column expectation names, or every row of the chunk when a critical expectation
    fails on the table as a whole (a missing column, a row count) and so names no row.
    """
    import pandas as pd

    from tasks.quality import validate_table

    frame = pd.DataFrame([row.values for row in rows])
    report = validate_table(
        frame, "user-input-expectations", expectations, result_format="COMPLETE"
    )
    reasons: dict[int, list[str]] = {}
    for outcome in report.errors:
        where = f" on {outcome.column}" if outcome.column else ""
        if outcome.unexpected_rows:
            positions = [p for p in outcome.unexpected_rows if 0 <= p < len(rows)]
            reason = f"{outcome.expectation}{where}"
        else:
            positions = list(range(len(rows)))
            reason = f"whole chunk: {outcome.describe()}"
        for position in positions:
            reasons.setdefault(rows[position].number, []).append(reason)
    flagged = {number: "input suite: " + "; ".join(found) for number, found in reasons.items()}
    return report, flagged


def check_output_records(
    records: list[dict[str, Any]], expectations: list[Expectation]
) -> QualityReport:
    """The user's suite (--expectations) on one chunk of output records."""
    import pandas as pd

    from tasks.quality import validate_table

    return validate_table(pd.DataFrame(records), "user-expectations", expectations)


class QualityGates:
    """Every data-quality verdict of a run: the built-in input and output suites, and the user's
    own on the input (before any LLM call) and on the output, chunk by chunk."""

    def __init__(
        self,
        job: RecordJob,
        input_suite: list[Expectation] | None = None,
        output_suite: list[Expectation] | None = None,
    ) -> None:
        self.job = job
        self.input_suite = input_suite
        self.output_suite = output_suite
        self.ledger = OutputLedger()
        self.verdicts: dict[str, str] = {}
        """The latest summary line of each suite."""
        self.errors: list[str] = []

    def _record(self, name: str, report: QualityReport) -> None:
        self.verdicts[name] = report.summary_line()
        if not report.success:
            self.errors.append(report.reason())

    @property
    def flags_rows(self) -> bool:
        """Whether `check_input` decides which rows are sent (a user's input suite does; the
        built-in one only verifies what reading already screened)."""
        return bool(self.input_suite)

    def check_input(self, rows: list[Row]) -> None:
        """The input suites on a chunk; the rows the user's suite fails end `invalid_input`."""
        self._record("input", check_input_rows(rows, self.job))
        if not self.input_suite:
            return
        report, flagged = check_input_records(rows, self.input_suite)
        self._record("user-input", report)
        for row in rows:
            if row.problem is None and row.number in flagged:
                row.problem = flagged[row.number]

    def check_output(self, records: list[dict[str, Any]], results: list[RowResult]) -> None:
        """A written chunk: into the ledger, and through the user's output suite."""
        for result in results:
            self.ledger.add(result, self.job)
        if self.output_suite:
            self._record("user", check_output_records(records, self.output_suite))

    def check_every_row_once(self, input_rows: int) -> None:
        self._record("output", self.ledger.check(input_rows))
