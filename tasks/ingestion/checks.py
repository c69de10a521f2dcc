"""The quality gate before a write: a batch's documents and chunks as tables, checked with GX."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.documents import DocChunk, Document
from tasks.ingestion.prepare import PreparedDocument
from tasks.ingestion.report import QuarantineRecord
from tasks.quality import QualityReport

if TYPE_CHECKING:
    import pandas as pd


def _body_chars(chunk: DocChunk) -> int:
    prefix = f"{chunk.heading}\n\n"
    body = chunk.text.removeprefix(prefix) if chunk.heading else chunk.text
    return len(body.strip())


def _document_table(documents: list[Document]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "source": [d.source for d in documents],
            "chars": [len(d.text) for d in documents],
            "document_hash": [d.document_hash for d in documents],
        }
    )


def _chunk_table(chunks: list[DocChunk]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "id": [c.id for c in chunks],
            "token_count": [c.token_count for c in chunks],
            "source": [c.metadata.get("source") for c in chunks],
            "content_hash": [c.content_hash for c in chunks],
            "document_hash": [c.metadata.get("document_hash") for c in chunks],
            "chunk_index": [c.chunk_index for c in chunks],
            "body_chars": [_body_chars(c) for c in chunks],
        }
    )


def _failed(report: QualityReport) -> list[str]:
    """The failed expectations by name, for machines (the reason says them in words)."""
    return [f"{o.expectation}({o.column})" if o.column else o.expectation for o in report.errors]


def check_batch(
    prepared: list[PreparedDocument],
    max_tokens: int,
    max_chars: int,
) -> tuple[list[PreparedDocument], list[QuarantineRecord], list[str]]:
    """Gate documents and their chunks on quality; failing documents go to quarantine.

    The batch is validated as one table; only when it fails is each document validated alone,
    so the happy path costs two validations per batch. That shortcut is sound only because a
    batch passes exactly when each of its documents would pass alone, whichever files share
    the batch (a crash changes that: a resumed run's batches hold only what was left to do):
    every document here has chunks (`prepare_documents` skips those without) and sources are
    unique (`unique_sources`), so the table-wide expectations (row count, unique sources and
    ids) cannot fail for the batch unless they fail for one of its documents.
    """
    from tasks.quality import doc_chunk_expectations, document_expectations, validate_table

    def validate(items: list[PreparedDocument]) -> tuple[QualityReport, QualityReport]:
        documents = validate_table(
            _document_table([p.document for p in items]),
            "documents",
            document_expectations(max_chars),
        )
        chunks = validate_table(
            _chunk_table([c for p in items for c in p.chunks]),
            "document-chunks",
            doc_chunk_expectations(max_tokens),
        )
        return documents, chunks

    if not prepared:
        return [], [], []
    documents, chunks = validate(prepared)
    warnings = [w.describe() for report in (documents, chunks) for w in report.warnings]
    if documents.success and chunks.success:
        return prepared, [], warnings
    kept: list[PreparedDocument] = []
    quarantine: list[QuarantineRecord] = []
    for item in prepared:
        documents, chunks = validate([item])
        if documents.success and chunks.success:
            kept.append(item)
            continue
        failed = [report for report in (documents, chunks) if not report.success]
        quarantine.append(
            QuarantineRecord(
                source=item.source,
                reason="; ".join(report.reason() for report in failed),
                failed_expectations=[line for report in failed for line in _failed(report)],
            )
        )
    return kept, quarantine, warnings
