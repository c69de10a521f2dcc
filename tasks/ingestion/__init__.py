"""Document ingestion into the vector store: load and check, chunk, plan, embed, write, verify.

The plain functions do the work; the `@task` wrappers (`steps`) give Prefect one task run per
document batch (not per chunk, see ../shared/NOTES.md on task-run cost).

Incremental and crash-safe by construction:
- chunk ids are deterministic (`tasks.documents.chunk_id`), so every write is an idempotent upsert;
- a document is skipped only when its hash matches the store and every expected id is there,
  cut with the same chunking (`prepare.chunking_key`: chunker version, budget, overlap, JSON text
  field; the collection pins the embedding model and so the tokenizer). A file whose bytes
  hash to the stored hash and whose stored chunks are complete and record that chunking is
  skipped before it is parsed, so an unchanged corpus costs a hash per file and one metadata
  query per batch;
- quality checks gate writes: they run on the documents that are to be written, and a
  document's verdict never depends on which files share its batch (`checks.check_batch`);
- documents with nothing to index are skipped, not quarantined; why a file was left out is
  remembered per source with its hash and the settings (`LeftOutLedger`, in the store), so an
  unchanged left-out file also costs only a hash and is reported again with the same verdict;
- a changed document is replaced by upserting its new ids first and deleting its stale ids
  after, so a crash in between leaves extra chunks that the next run removes, never a hole;
- vectors are looked up by content hash in the store before any is computed, so texts
  embedded before a crash, a rename or an edit elsewhere are not paid for twice.

Modules, in the order a batch meets them: `driver` (`ingest_files`, batches in flight),
`progress` (documents done and chunks embedded, as they change), `steps`
(plain or Prefect task steps), `batch` (one batch), `prepare` (load, chunk), `checks` (quality
gate), `store` (plan against the store, embed, write, delete, verify), `left_out` (remembered
verdicts), `report` (`IngestReport`, quarantine file, markdown)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.ingestion.driver import ingest_files, unique_sources
    from tasks.ingestion.report import (
        IngestReport,
        QuarantineRecord,
        ingest_report_markdown,
        merge_ingest_reports,
        skipped_lines,
        write_quarantine,
    )
    from tasks.ingestion.steps import PLAIN_STEPS, TASK_STEPS, IngestSteps
    from tasks.ingestion.store import (
        CLEANUP_MODES,
        CleanupMode,
        check_cleanup,
        delete_missing_sources,
    )

# Loaded on first use (PEP 562): `steps` imports Prefect, and the CLI reads the store through
# `tasks.ingestion.batch` before it has pointed Prefect at a server (pipelines/cli.py, ingest).
_HOMES = {
    "ingest_files": "driver",
    "unique_sources": "driver",
    "IngestReport": "report",
    "QuarantineRecord": "report",
    "ingest_report_markdown": "report",
    "merge_ingest_reports": "report",
    "skipped_lines": "report",
    "write_quarantine": "report",
    "PLAIN_STEPS": "steps",
    "TASK_STEPS": "steps",
    "IngestSteps": "steps",
    "CLEANUP_MODES": "store",
    "CleanupMode": "store",
    "check_cleanup": "store",
    "delete_missing_sources": "store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "CLEANUP_MODES",
    "PLAIN_STEPS",
    "TASK_STEPS",
    "CleanupMode",
    "IngestReport",
    "IngestSteps",
    "QuarantineRecord",
    "check_cleanup",
    "delete_missing_sources",
    "ingest_files",
    "ingest_report_markdown",
    "merge_ingest_reports",
    "skipped_lines",
    "unique_sources",
    "write_quarantine",
]
