"""The report of a batch run, as data and as Markdown for the Prefect UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from tasks.llm import Usage

if TYPE_CHECKING:
    from pathlib import Path

    from tasks.batch.plan import BatchPlan
    from tasks.batch.quality import QualityGates
    from tasks.batch.results import RowResult


class BatchReport(BaseModel):
    """The machine-readable report of one `batch_records` run."""

    input: str
    output: str
    dead_letter: str | None = None
    mode: str
    engine: str
    model: str
    rows: int
    ok: int
    failed: int
    invalid_input: int
    reused: int = 0
    """ok rows taken from the journal or the previous output."""
    llm_calls: int
    usage: Usage
    duration_s: float
    rows_per_s: float
    rate_limit_pauses: int = 0
    paused_s: float = 0.0
    quality: list[str] = Field(default_factory=list)
    quality_errors: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    """The first failure reasons."""
    flow_run_id: str | None = None

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.invalid_input == 0 and not self.quality_errors

    def headline(self) -> str:
        return (
            f"{self.rows} rows: {self.ok} ok ({self.reused} reused), {self.failed} failed, "
            f"{self.invalid_input} invalid input"
        )


def batch_report_markdown(report: BatchReport) -> str:
    """The run report as Markdown for the Prefect UI."""
    usage = report.usage
    lines = [
        "# Batch records",
        "",
        f"**{report.headline()}** in {report.duration_s:.1f} s ({report.rows_per_s:.1f} rows/s)",
        "",
        f"`{report.input}` -> `{report.output}` · mode `{report.mode}` · engine "
        f"`{report.engine}` · model `{report.model}`",
        "",
        "| Rows | ok | failed | invalid input | reused | LLM calls | prompt tokens "
        "| completion tokens | est. cost (USD) | 429 pauses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {report.rows} | {report.ok} | {report.failed} | {report.invalid_input} "
        f"| {report.reused} | {report.llm_calls} | {usage.prompt_tokens} "
        f"| {usage.completion_tokens} | {usage.cost_usd:.4f} "
        f"| {report.rate_limit_pauses} ({report.paused_s:.1f} s) |",
        "",
        "## Data quality",
        "",
        *[f"- {line}" for line in report.quality],
        *[f"- **{line}**" for line in report.quality_errors],
    ]
    if report.failures:
        lines += ["", "## First failures", "", *[f"- {f}" for f in report.failures]]
    if report.dead_letter:
        lines += ["", f"Failed rows with reasons: `{report.dead_letter}`"]
    return "\n".join(lines) + "\n"


def batch_report(
    plan: BatchPlan,
    outcomes: list[RowResult],
    gates: QualityGates,
    *,
    dead_letter: Path | None,
    duration_s: float,
    flow_run_id: str | None = None,
) -> BatchReport:
    """The report of a finished run, from the end of every row (reused rows cost nothing)."""
    usage = Usage.total([o.usage for o in outcomes if not o.reused])
    limiter = plan.engine.limiter
    return BatchReport(
        input=str(plan.source),
        output=str(plan.output),
        dead_letter=str(dead_letter) if dead_letter else None,
        mode=plan.mode,
        engine=plan.engine.name,
        model=plan.engine.model,
        rows=len(outcomes),
        ok=sum(o.status == "ok" for o in outcomes),
        failed=sum(o.status == "failed" for o in outcomes),
        invalid_input=sum(o.status == "invalid_input" for o in outcomes),
        reused=sum(o.reused for o in outcomes),
        llm_calls=usage.calls,
        usage=usage,
        duration_s=round(duration_s, 3),
        rows_per_s=round(len(outcomes) / duration_s, 2) if duration_s > 0 else 0.0,
        rate_limit_pauses=limiter.pauses if limiter else 0,
        paused_s=round(limiter.paused_s, 2) if limiter else 0.0,
        quality=list(gates.verdicts.values()),
        quality_errors=gates.errors[:10],
        failures=[
            f"row {o.number} ({o.row_id}): {o.status}: {o.error}"
            for o in outcomes
            if o.status != "ok"
        ][:10],
        flow_run_id=flow_run_id,
    )


def merge_batch_reports(
    reports: list[BatchReport], output: Path, dead_letter: Path | None, duration_s: float
) -> BatchReport:
    """One report for the shards of a job, whose parts were joined into `output`."""
    first = reports[0]
    counted = ("rows", "ok", "failed", "invalid_input", "reused", "llm_calls", "rate_limit_pauses")
    merged = first.model_copy(
        update={
            **{key: sum(getattr(r, key) for r in reports) for key in counted},
            "output": str(output),
            "dead_letter": str(dead_letter) if dead_letter else None,
            "usage": Usage.total([r.usage for r in reports]),
            "duration_s": round(duration_s, 3),
            "paused_s": round(sum(r.paused_s for r in reports), 2),
            "quality": list(dict.fromkeys(q for r in reports for q in r.quality)),
            "quality_errors": [e for r in reports for e in r.quality_errors][:10],
            "failures": [f for r in reports for f in r.failures][:10],
        }
    )
    merged.rows_per_s = round(merged.rows / duration_s, 2) if duration_s > 0 else 0.0
    return merged
