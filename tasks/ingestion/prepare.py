"""Load and chunk a batch's files: documents to check and write, or records of why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tasks.documents import (
    CHUNKER_VERSION,
    DEFAULT_MAX_BYTES,
    DocChunk,
    Document,
    DocumentPath,
    chunk_document,
    load_document,
)
from tasks.embeddings import Embedder
from tasks.errors import GristmillError, NothingToIndex
from tasks.ingestion.report import QuarantineRecord, SkipRecord


@dataclass
class PreparedDocument:
    """A loaded document, its chunks, and what the store must hold for it."""

    document: Document
    chunks: list[DocChunk]

    @property
    def source(self) -> str:
        return self.document.source

    @property
    def expected_ids(self) -> set[str]:
        return {chunk.id for chunk in self.chunks}


def chunk_budget(doc_chunk_tokens: int, embedder: Embedder) -> int:
    """Tokens per chunk: the configured budget, capped by what the embedder reads."""
    limit = getattr(embedder, "max_text_tokens", None)
    return min(doc_chunk_tokens, limit) if isinstance(limit, int) else doc_chunk_tokens


class Prepared(NamedTuple):
    """A batch's files after loading and chunking, sorted by what happens to them next."""

    documents: list[PreparedDocument]
    quarantine: list[QuarantineRecord]
    skipped: list[SkipRecord]


def prepare_documents(
    paths: Sequence[DocumentPath],
    embedder: Embedder,
    *,
    max_tokens: int,
    overlap_tokens: int,
    json_text_field: str = "text",
    max_bytes: int = DEFAULT_MAX_BYTES,
    context: bool = False,
) -> Prepared:
    """Load and chunk each file; a file that cannot be used becomes a quarantine record, one
    with nothing to index (no chunks) a skip record.

    Deciding "nothing to index" here, per document, keeps the batch's quality checks about
    content: a document without chunks used to pass them when others in its batch had chunks
    (the chunk table's row count was the batch's) and fail them when it was checked alone, so
    its verdict depended on which files happened to share its batch.
    """
    count = getattr(embedder, "count_tokens", None)
    adds_up = count is not None and getattr(embedder, "TOKEN_COUNTS_ADD_UP", False) is True
    prepared: list[PreparedDocument] = []
    quarantine: list[QuarantineRecord] = []
    skipped: list[SkipRecord] = []
    for found in paths:
        try:
            document = load_document(
                found.path, root=found.root, json_text_field=json_text_field, max_bytes=max_bytes
            )
            chunks = chunk_document(
                document,
                max_tokens,
                overlap_tokens,
                count=count,
                counts_add_up=adds_up,
                context=context,
            )
        except NothingToIndex as exc:
            skipped.append(SkipRecord(source=found.source, reason=exc.message))
            continue
        except GristmillError as exc:
            quarantine.append(
                QuarantineRecord(source=found.source, reason=str(exc), failed_expectations=[])
            )
            continue
        except Exception as exc:  # a parser bug on one file must not stop the run
            quarantine.append(
                QuarantineRecord(
                    source=found.source, reason=f"{type(exc).__name__}: {exc}", unexpected=True
                )
            )
            continue
        if not chunks:
            skipped.append(SkipRecord(source=found.source, reason="only headings, no text"))
            continue
        prepared.append(PreparedDocument(document, chunks))
    return Prepared(prepared, quarantine, skipped)


def chunking_key(
    max_tokens: int, overlap_tokens: int, json_text_field: str, context: bool = False
) -> str:
    """What decides a document's chunks and the text embedded besides its bytes (and the
    collection's embedder, whose tokenizer counts the tokens); every chunk records it as
    `chunking`, so a change re-chunks and re-embeds a collection's unchanged files."""
    key = f"v{CHUNKER_VERSION} tokens={max_tokens} overlap={overlap_tokens} text={json_text_field}"
    return f"{key} context=on" if context else key
