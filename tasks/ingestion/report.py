"""What an ingest run reports: its counts, the documents it left out and why, as JSON,
terminal lines, a quarantine file and the run's markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.reporting import write_atomically


class QuarantineRecord(BaseModel):
    """A document left out of the run, and why."""

    source: str
    reason: str
    failed_expectations: list[str] = Field(default_factory=list)
    unexpected: bool = Field(default=False, exclude=True)
    """Left out by an error of ours (a parser's crash), not by the file: not remembered."""


class SkipRecord(BaseModel):
    """A document with nothing to index (empty, front matter only, blank): not a failure."""

    source: str
    reason: str


class IngestReport(BaseModel):
    """What one ingest run did; the integer fields count documents unless named for chunks."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    quarantined: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    embeddings_computed: int = 0
    embeddings_reused: int = 0
    collection_count: int = 0
    duration_s: float = 0.0
    collection: str = ""
    embedding_model: str = ""
    cleanup: str = "incremental"
    run_id: str = ""
    quarantine: list[QuarantineRecord] = Field(default_factory=list)
    quarantine_path: str | None = None
    skipped_documents: list[SkipRecord] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def headline(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.deleted} deleted, {self.skipped} skipped, {self.quarantined} quarantined; "
            f"{self.chunks_written} chunks written, {self.chunks_deleted} deleted, "
            f"{self.embeddings_computed} embeddings computed; "
            f"{self.collection_count} chunks in {self.collection!r}"
        )

    def counts(self) -> dict[str, int]:
        """The integer keys of `gristmill ingest --json`."""
        return {key: getattr(self, key) for key in JSON_COUNTS}


SUMMED = (
    "added",
    "updated",
    "unchanged",
    "deleted",
    "skipped",
    "quarantined",
    "chunks_written",
    "chunks_deleted",
    "embeddings_computed",
    "embeddings_reused",
)
"""The counts a sharded job's report sums over its shards."""
JSON_COUNTS = (*(key for key in SUMMED if key != "embeddings_reused"), "collection_count")
"""The counts `gristmill ingest --json` prints (in this order)."""


def merge_ingest_reports(reports: list[IngestReport]) -> IngestReport:
    """One report for the shards of a job: counts summed, the documents' lists joined (in
    source order); the caller sets the job's own duration and collection count."""
    merged = IngestReport(
        **(reports[0].model_dump(include={"collection", "embedding_model"}) if reports else {})
    )
    for report in reports:
        for key in SUMMED:
            setattr(merged, key, getattr(merged, key) + getattr(report, key))
        merged.quarantine += report.quarantine
        merged.skipped_documents += report.skipped_documents
        merged.warnings += report.warnings
    merged.quarantine.sort(key=lambda r: r.source)
    merged.skipped_documents.sort(key=lambda r: r.source)
    return merged


def write_quarantine(directory: Path, run_id: str, records: list[QuarantineRecord]) -> Path | None:
    """`<directory>/<run_id>.jsonl`, one record a line; nothing when no document was quarantined."""
    if not records:
        return None
    path = directory / f"{run_id}.jsonl"
    lines = [json.dumps(r.model_dump(), ensure_ascii=False) for r in records]
    write_atomically(path, "\n".join(lines) + "\n")
    return path


def skipped_lines(records: list[SkipRecord], examples: int = 3) -> list[str]:
    """One terminal line per reason: a docs tree can hold hundreds of empty pages."""
    by_reason: dict[str, list[str]] = {}
    for record in records:
        by_reason.setdefault(record.reason, []).append(record.source)
    lines = []
    for reason, sources in by_reason.items():
        shown = ", ".join(sources[:examples])
        more = f" and {len(sources) - examples} more" if len(sources) > examples else ""
        lines.append(f"skipped {len(sources)} (nothing to index: {reason}): {shown}{more}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def ingest_report_markdown(report: IngestReport) -> str:
    rows = [
        ("Documents added", report.added),
        ("Documents updated", report.updated),
        ("Documents unchanged", report.unchanged),
        ("Documents deleted", report.deleted),
        ("Documents skipped (nothing to index)", report.skipped),
        ("Documents quarantined", report.quarantined),
        ("Chunks written", report.chunks_written),
        ("Chunks deleted", report.chunks_deleted),
        ("Embeddings computed", report.embeddings_computed),
        ("Embeddings reused", report.embeddings_reused),
        ("Chunks in collection", report.collection_count),
        ("Time (s)", f"{report.duration_s:.2f}"),
    ]
    lines = [
        f"# Ingest into `{report.collection}`",
        "",
        f"Embedding model `{report.embedding_model}`, cleanup `{report.cleanup}`.",
        "",
        "| | |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    if report.quarantine:
        lines += ["", "## Quarantined", "", "| Source | Reason |", "|---|---|"]
        for record in report.quarantine:
            lines.append(f"| {_cell(record.source)} | {_cell(record.reason)} |")
    if report.skipped_documents:
        lines += ["", "## Skipped: nothing to index", "", "| Source | Reason |", "|---|---|"]
        for skip in report.skipped_documents:
            lines.append(f"| {_cell(skip.source)} | {_cell(skip.reason)} |")
    if report.warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report.warnings[:50])]
    return "\n".join(lines) + "\n"
