"""Document ingestion into the vector store: load and check, chunk, plan, embed, write, verify.

The plain functions do the work; the `@task` wrappers give Prefect one task run per document
batch (not per chunk, see ../shared/NOTES.md on task-run cost).

Incremental and crash-safe by construction:
- chunk ids are deterministic (`tasks.documents.chunk_id`), so every write is an idempotent upsert;
- a document is skipped only when its hash matches the store and every expected id is there,
  cut with the same chunking (`chunking_key`: chunker version, budget, overlap, JSON text
  field; the collection pins the embedding model and so the tokenizer). A file whose bytes
  hash to the stored hash and whose stored chunks are complete and record that chunking is
  skipped before it is parsed, so an unchanged corpus costs a hash per file and one metadata
  query per batch;
- quality checks gate writes: they run on the documents that are to be written, and a
  document's verdict never depends on which files share its batch (`check_batch`);
- documents with nothing to index are skipped, not quarantined; why a file was left out is
  remembered per source with its hash and the settings (`LeftOutLedger`, in the store), so an
  unchanged left-out file also costs only a hash and is reported again with the same verdict;
- a changed document is replaced by upserting its new ids first and deleting its stale ids
  after, so a crash in between leaves extra chunks that the next run removes, never a hole;
- vectors are looked up by content hash in the store before any is computed, so texts
  embedded before a crash, a rename or an edit elsewhere are not paid for twice.
"""

from __future__ import annotations

import contextvars
import functools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.documents import (
    CHUNKER_VERSION,
    DEFAULT_MAX_BYTES,
    DocChunk,
    Document,
    DocumentPath,
    chunk_document,
    file_hash,
    load_document,
)
from tasks.embeddings import Embedder, Vectors
from tasks.errors import (
    DataQualityError,
    GristmillError,
    NothingToIndex,
    StoreUnavailableError,
    UsageError,
)
from tasks.quality import QualityReport
from tasks.reporting import write_atomically
from tasks.vectorstore import ChunkStore, LeftOut, LeftOutLedger, server_errors

if TYPE_CHECKING:
    import pandas as pd
    from prefect.states import State

    from tasks.settings import Settings

R = TypeVar("R")
CleanupMode = Literal["none", "incremental", "full"]
CLEANUP_MODES: tuple[str, ...] = ("none", "incremental", "full")
DOCUMENTS_PER_BATCH = 32
# Waits before each retry of a document batch whose Chroma server went away (a restart takes
# a few seconds); after the last, the run stops and says so, keeping what it wrote.
STORE_RETRY_DELAYS_S: list[float] = [2, 10]
# Document batches ingested at once; their embedding calls take turns (`OneEmbedAtATime`).
BATCHES_IN_FLIGHT = 2
# Bump when what makes a document skipped or quarantined changes (the quality suites, a
# loader's verdicts), so the verdicts remembered for unchanged files are made again.
LEFT_OUT_VERSION = 1


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


def left_out_key(chunking: str, max_bytes: int) -> str:
    """What a skip or quarantine verdict depends on besides the file's bytes."""
    return f"{chunking} max_bytes={max_bytes} verdicts=v{LEFT_OUT_VERSION}"


def remembered(
    left_out: Mapping[str, LeftOut], hashes: Mapping[str, str | None], key: str
) -> tuple[list[SkipRecord], list[QuarantineRecord]]:
    """The verdicts in `left_out` made for exactly these bytes (`hashes`) and settings."""
    skipped: list[SkipRecord] = []
    quarantine: list[QuarantineRecord] = []
    for source, record in left_out.items():
        if record.key != key or record.document_hash != hashes.get(source):
            continue
        if record.status == "skipped":
            skipped.append(SkipRecord(source=source, reason=record.reason))
        else:
            quarantine.append(
                QuarantineRecord(
                    source=source,
                    reason=record.reason,
                    failed_expectations=record.failed_expectations,
                )
            )
    return skipped, quarantine


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
        return {
            key: getattr(self, key)
            for key in (
                "added",
                "updated",
                "unchanged",
                "deleted",
                "skipped",
                "quarantined",
                "chunks_written",
                "chunks_deleted",
                "embeddings_computed",
                "collection_count",
            )
        }


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


@dataclass
class BatchOutcome:
    """The result of one document batch."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    embeddings_computed: int = 0
    embeddings_reused: int = 0
    sources: list[str] = field(default_factory=list)
    expected: dict[str, set[str]] = field(default_factory=dict)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    skipped: list[SkipRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def batched(items: Sequence[DocumentPath], size: int) -> Iterable[list[DocumentPath]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def chunk_budget(doc_chunk_tokens: int, embedder: Embedder) -> int:
    """Tokens per chunk: the configured budget, capped by what the embedder reads."""
    limit = getattr(embedder, "max_text_tokens", None)
    return min(doc_chunk_tokens, limit) if isinstance(limit, int) else doc_chunk_tokens


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
    return [outcome.describe() for outcome in report.errors]


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
) -> Prepared:
    """Load and chunk each file; a file that cannot be used becomes a quarantine record, one
    with nothing to index (no chunks) a skip record.

    Deciding "nothing to index" here, per document, keeps the batch's quality checks about
    content: a document without chunks used to pass them when others in its batch had chunks
    (the chunk table's row count was the batch's) and fail them when it was checked alone, so
    its verdict depended on which files happened to share its batch.
    """
    count = getattr(embedder, "count_tokens", None)
    prepared: list[PreparedDocument] = []
    quarantine: list[QuarantineRecord] = []
    skipped: list[SkipRecord] = []
    for found in paths:
        try:
            document = load_document(
                found.path, root=found.root, json_text_field=json_text_field, max_bytes=max_bytes
            )
            chunks = chunk_document(document, max_tokens, overlap_tokens, count=count)
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


def chunking_key(max_tokens: int, overlap_tokens: int, json_text_field: str) -> str:
    """What decides a document's chunks besides its bytes (and the collection's embedder, whose
    tokenizer counts the tokens); every chunk records it as `chunking`."""
    return f"v{CHUNKER_VERSION} tokens={max_tokens} overlap={overlap_tokens} text={json_text_field}"


def unchanged_files(
    paths: Sequence[DocumentPath],
    stored: dict[str, str],
    store: ChunkStore,
    chunking: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hashes: Mapping[str, str | None] | None = None,
) -> set[str]:
    """Sources of `paths` that need no loading, chunking, checking or writing.

    A file qualifies when its bytes hash to its stored document hash and the store holds
    exactly its chunks: each stored chunk of the source records that hash, `chunking`, and a
    chunk count equal to the chunks found. Chunks are a function of the bytes and the chunking,
    so those are the ids a fresh chunking would give. Anything else (new, edited, interrupted,
    another budget, chunks kept by cleanup `none`) takes the full path.
    """
    if hashes is None:
        hashes = {p.source: file_hash(p.path, max_bytes) for p in paths if stored.get(p.source)}
    candidates = sorted(
        source for source, h in hashes.items() if stored.get(source) and h == stored[source]
    )
    if not candidates:
        return set()
    found: dict[str, list[Mapping[str, object]]] = {}
    where: dict[str, Any] = {"source": {"$in": candidates}}
    page = store.collection.get(where=where, include=["metadatas"])
    for metadata in page["metadatas"] or []:
        if metadata:
            found.setdefault(str(metadata.get("source")), []).append(metadata)
    return {
        source
        for source, chunks in found.items()
        if source in hashes
        and all(
            metadata.get("document_hash") == hashes[source]
            and metadata.get("chunking") == chunking
            and metadata.get("chunk_count") == len(chunks)
            for metadata in chunks
        )
    }


def is_unchanged(
    item: PreparedDocument,
    stored_hash: str | None,
    store: ChunkStore,
    *,
    chunking: str,
    exact: bool = True,
) -> bool:
    """True when the store already holds this document's chunks, cut with `chunking` (chunks
    that came out the same under another budget are rewritten once, to record it).

    With `exact` (cleanup incremental or full) the source must also hold nothing else: its
    stored hash matches, which `ChunkStore.sources` only reports when every chunk of the source
    agrees on it and on a chunk count equal to the chunks found. With cleanup `none`, old
    chunks are kept on purpose, so only the presence of the current ones counts.
    """
    if stored_hash is None or (exact and stored_hash != item.document.document_hash):
        return False
    expected = item.expected_ids
    found = store.get(sorted(expected))
    if set(found) != expected:
        return False
    return all(
        metadata.get("chunk_count") == len(expected)
        and metadata.get("document_hash") == item.document.document_hash
        and metadata.get("chunking") == chunking
        for metadata in found.values()
    )


def embed_chunks(
    chunks: list[DocChunk], embedder: Embedder, store: ChunkStore
) -> tuple[np.ndarray, int, int]:
    """Vectors for `chunks`: stored ones by content hash, the rest computed once per text.

    The missing texts go to the embedder in one call and it makes its own batches: the local
    one sorts them by length first, so each batch pads little (cutting the list into groups of
    64 before that padded ~11% more tokens on benchmarks/ingest_speed.py's corpus).
    Returns (vectors in chunk order, computed, reused).
    """
    if not chunks:
        return np.zeros((0, store.dimension), dtype=np.float32), 0, 0
    known = store.embeddings_by_content_hash([c.content_hash for c in chunks])
    reused = sum(1 for c in chunks if c.content_hash in known)
    missing: dict[str, str] = {}
    for chunk in chunks:
        if chunk.content_hash not in known:
            missing.setdefault(chunk.content_hash, chunk.text)
    hashes = list(missing)
    if hashes:
        vectors = np.asarray(embedder.embed([missing[h] for h in hashes]), dtype=np.float32)
        for content_hash, vector in zip(hashes, vectors, strict=True):
            known[content_hash] = vector
    matrix = np.stack([np.asarray(known[c.content_hash], dtype=np.float32) for c in chunks])
    return matrix, len(hashes), reused


def write_documents(
    items: list[PreparedDocument],
    store: ChunkStore,
    embedder: Embedder,
    *,
    cleanup: CleanupMode,
    ingested_at: str,
    chunking: str,
    stored: Container[str] | None = None,
) -> tuple[int, int, int, int]:
    """Upsert the chunks of `items`, then delete each source's stale ids (unless cleanup=none).

    `stored` names the sources the store held when the run began (None: assume all): only
    those can have stale ids, so new documents skip the lookup.
    Returns (chunks written, chunks deleted, embeddings computed, embeddings reused).
    """
    chunks = [c for item in items for c in item.chunks]
    vectors, computed, reused = embed_chunks(chunks, embedder, store)
    metadatas = [
        {
            **c.metadata,
            "ingested_at": ingested_at,
            "embedding_model": store.embedding_name,
            "chunker_version": CHUNKER_VERSION,
            "chunking": chunking,
        }
        for c in chunks
    ]
    written = store.upsert([c.id for c in chunks], vectors, [c.text for c in chunks], metadatas)
    deleted = 0
    if cleanup != "none":
        for item in items:
            if stored is not None and item.source not in stored:
                continue
            stale = sorted(set(store.ids_for_source(item.source)) - item.expected_ids)
            deleted += store.delete_ids(stale)
    return written, deleted, computed, reused


def ingest_batch_plain(
    paths: Sequence[DocumentPath],
    store: ChunkStore,
    embedder: Embedder,
    stored: dict[str, str],
    *,
    max_tokens: int,
    overlap_tokens: int,
    cleanup: CleanupMode,
    json_text_field: str = "text",
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str = "",
) -> BatchOutcome:
    """Plan, load, chunk, check, embed and write one batch of documents (`label` names the
    task run).

    Each file is hashed first. Unchanged files (`unchanged_files`) and files left out before
    with the same bytes and settings (the store's `LeftOutLedger`) are set aside, so they are
    neither parsed nor checked; the latter are reported again with their remembered verdict.
    The verdicts of this batch are remembered last, after its chunks are written: a crash in
    between leaves nothing that could give a file another verdict next time.
    """
    outcome = BatchOutcome()
    outcome.sources = [p.source for p in paths]
    chunking = chunking_key(max_tokens, overlap_tokens, json_text_field)
    hashes = {p.source: file_hash(p.path, max_bytes) for p in paths}
    unchanged = unchanged_files(paths, stored, store, chunking, max_bytes, hashes)
    outcome.unchanged = len(unchanged)
    ledger = store.left_out()
    key = left_out_key(chunking, max_bytes)
    held = ledger.find(sorted(s for s, h in hashes.items() if h and s not in unchanged))
    skipped_before, quarantined_before = remembered(held, hashes, key)
    known = unchanged | {r.source for r in skipped_before} | {r.source for r in quarantined_before}
    prepared, quarantine, skipped_documents = prepare_documents(
        [p for p in paths if p.source not in known],
        embedder,
        max_tokens=max_tokens,
        overlap_tokens=overlap_tokens,
        json_text_field=json_text_field,
        max_bytes=max_bytes,
    )
    changed: list[PreparedDocument] = []
    for item in prepared:
        previous = stored.get(item.source)
        if is_unchanged(item, previous, store, chunking=chunking, exact=cleanup != "none"):
            outcome.unchanged += 1
        else:
            changed.append(item)
    to_write, rejected, warnings = check_batch(changed, max_tokens, max_chars=max_bytes)
    outcome.quarantine = quarantined_before + quarantine + rejected
    outcome.skipped = skipped_before + skipped_documents
    outcome.warnings = warnings
    for item in to_write:
        if item.source in stored:
            outcome.updated += 1
        else:
            outcome.added += 1
        outcome.expected[item.source] = item.expected_ids
    written, deleted, computed, reused = write_documents(
        to_write,
        store,
        embedder,
        cleanup=cleanup,
        ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
        chunking=chunking,
        stored=stored,
    )
    if cleanup != "none":
        # A document that now holds nothing keeps no chunks of an older version.
        for record in outcome.skipped:
            if record.source in stored:
                deleted += store.delete_source(record.source)
                outcome.expected[record.source] = set()
    remember_verdicts(
        ledger,
        hashes,
        key,
        [*skipped_documents, *quarantine, *rejected],
        forget=[item.source for item in to_write if item.source in held],
    )
    outcome.chunks_written = written
    outcome.chunks_deleted = deleted
    outcome.embeddings_computed = computed
    outcome.embeddings_reused = reused
    return outcome


def remember_verdicts(
    ledger: LeftOutLedger,
    hashes: Mapping[str, str | None],
    key: str,
    records: Sequence[SkipRecord | QuarantineRecord],
    forget: Sequence[str] = (),
) -> None:
    """Remember why files were left out (those with a hash: readable, within the size limit),
    and forget the records of files now written."""
    remember = [
        LeftOut(
            source=record.source,
            document_hash=document_hash,
            key=key,
            status="skipped" if isinstance(record, SkipRecord) else "quarantined",
            reason=record.reason,
            failed_expectations=getattr(record, "failed_expectations", []),
        )
        for record in records
        if (document_hash := hashes.get(record.source)) and remembers(record)
    ]
    if remember:
        ledger.remember(remember)
    if forget:
        ledger.forget(forget)


def remembers(record: SkipRecord | QuarantineRecord) -> bool:
    """False for a verdict that may not hold next time with the same bytes: a parser's crash
    (a bug a release may fix without bumping LEFT_OUT_VERSION)."""
    return not (isinstance(record, QuarantineRecord) and record.unexpected)


def delete_missing_sources(
    store: ChunkStore, stored: dict[str, str], present: set[str]
) -> tuple[list[str], int]:
    """Full cleanup: delete every stored source not found in this run, and forget why those
    left out were; returns (sources, chunks)."""
    gone = sorted(set(stored) - present)
    deleted = sum(store.delete_source(source) for source in gone)
    ledger = store.left_out()
    ledger.forget(sorted(ledger.sources() - present))
    return gone, deleted


def verify_sources(
    store: ChunkStore, expected: dict[str, set[str]], *, exact: bool = True
) -> list[str]:
    """Problems where the store does not hold exactly (or, with exact=False, at least) the
    expected ids of a touched source; empty when all is well."""
    problems = []
    for source, ids in sorted(expected.items()):
        found = set(store.ids_for_source(source))
        missing = ids - found
        extra = found - ids if exact else set()
        if missing or extra:
            problems.append(f"{source}: {len(missing)} chunks missing, {len(extra)} unexpected")
    return problems


def raise_for_problems(problems: list[str]) -> None:
    if problems:
        raise DataQualityError(
            "the collection does not hold exactly the expected chunks: " + "; ".join(problems[:5]),
            failed=[
                {"expectation": "collection_holds_expected_ids", "detail": p} for p in problems
            ],
        )


def check_cleanup(cleanup: str) -> CleanupMode:
    if cleanup not in CLEANUP_MODES:
        raise UsageError(f"--cleanup must be one of none, incremental, full; not {cleanup!r}")
    return cleanup  # type: ignore[return-value]


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


def store_lost(task: object, task_run: object, state: State[Any]) -> bool:
    """Prefect retry condition: retry a batch only when the Chroma server went away.

    Writes are idempotent upserts of deterministic ids, so a batch that is run again converges.
    """
    try:
        state.result()
    except StoreUnavailableError:
        return True
    except Exception:
        return False
    return False


def _naming_server_errors(fn: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        with server_errors():
            return fn(*args, **kwargs)

    return run


ingest_batch = task(
    name="ingest_batch",
    task_run_name="ingest {label}",
    cache_policy=NO_CACHE,
    retries=len(STORE_RETRY_DELAYS_S),
    retry_delay_seconds=STORE_RETRY_DELAYS_S,
    retry_condition_fn=store_lost,
)(_naming_server_errors(ingest_batch_plain))


@task(task_run_name="delete missing sources", cache_policy=NO_CACHE)
def delete_missing(
    store: ChunkStore, stored: dict[str, str], present: set[str]
) -> tuple[list[str], int]:
    """Delete sources that are no longer present (full cleanup)."""
    with server_errors():
        return delete_missing_sources(store, stored, present)


@task(task_run_name="verify collection", cache_policy=NO_CACHE)
def verify_collection(store: ChunkStore, expected: dict[str, set[str]], exact: bool) -> None:
    """Fail unless the collection holds the expected ids of every touched source."""
    with server_errors():
        problems = verify_sources(store, expected, exact=exact)
    raise_for_problems(problems)


class OneEmbedAtATime:
    """An embedder whose `embed` calls run one at a time, for batches ingested side by side.

    `ingest_files` keeps two document batches in flight so that one batch's loading, chunking,
    checks and writes (single-threaded Python, ~15% of an ingest) run while the other batch
    embeds. The local embedder already uses every core, so two embeddings at once would only
    contend: they take turns. Everything else is the wrapped embedder's.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: list[str]) -> Vectors:
        with self._lock:
            return self.embedder.embed(texts)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle protocols and private state stay this object's
            raise AttributeError(name)
        return getattr(self.embedder, name)


def in_flight(
    run: Callable[[list[DocumentPath]], BatchOutcome],
    batches: Iterable[list[DocumentPath]],
    width: int = BATCHES_IN_FLIGHT,
) -> Iterator[tuple[list[DocumentPath], BatchOutcome]]:
    """`run` over `batches` with `width` at once, each in a copy of the caller's context (so a
    Prefect task called in it belongs to the caller's flow run); yields in batch order. After a
    failure no new batch starts; the one still running finishes, then the error is raised."""
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="ingest-batch") as pool:
        pending: deque[tuple[list[DocumentPath], Future[BatchOutcome]]] = deque()
        try:
            for batch in batches:
                if len(pending) == width:
                    first, future = pending.popleft()
                    yield first, future.result()
                pending.append((batch, pool.submit(contextvars.copy_context().run, run, batch)))
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


class IngestSteps(NamedTuple):
    """The step functions `ingest_files` calls: plain ones, or the flow's Prefect tasks."""

    batch: Callable[..., BatchOutcome]
    delete_missing: Callable[..., tuple[list[str], int]]
    verify: Callable[..., None]


def _verify_plain(store: ChunkStore, expected: dict[str, set[str]], exact: bool) -> None:
    raise_for_problems(verify_sources(store, expected, exact=exact))


PLAIN_STEPS = IngestSteps(ingest_batch_plain, delete_missing_sources, _verify_plain)
TASK_STEPS = IngestSteps(ingest_batch, delete_missing, verify_collection)


def unique_sources(
    files: Sequence[DocumentPath],
) -> tuple[list[DocumentPath], list[QuarantineRecord]]:
    """Files with distinct source names; a later file with a name already taken is quarantined
    (two documents under one source would replace each other's chunks)."""
    seen: dict[str, DocumentPath] = {}
    duplicates: list[QuarantineRecord] = []
    for found in files:
        first = seen.setdefault(found.source, found)
        if first is not found:
            duplicates.append(
                QuarantineRecord(
                    source=found.source,
                    reason=f"duplicate source name: {found.path} and {first.path} are both "
                    f"{found.source!r}; ingest their folders separately or rename one",
                    failed_expectations=["expect_column_values_to_be_unique(source)"],
                )
            )
    return list(seen.values()), duplicates


def ingest_files(
    files: Sequence[DocumentPath],
    store: ChunkStore,
    embedder: Embedder,
    settings: Settings,
    *,
    cleanup: str = "incremental",
    run_id: str | None = None,
    steps: IngestSteps = PLAIN_STEPS,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Bring `store` in line with `files`; the caller holds the writer lock.

    Writes the quarantine file; raises DataQualityError when verification fails.
    """
    started = time.monotonic()
    mode = check_cleanup(cleanup)
    run_id = run_id or uuid.uuid4().hex
    report = IngestReport(
        collection=store.name, embedding_model=store.embedding_name, cleanup=mode, run_id=run_id
    )
    max_tokens = chunk_budget(settings.doc_chunk_tokens, embedder)
    stored = store.sources()
    store.left_out()  # made once here, not by two batches at once
    expected: dict[str, set[str]] = {}
    present: set[str] = set()
    files, duplicates = unique_sources(files)
    report.quarantine += duplicates
    done = len(duplicates)
    serial = OneEmbedAtATime(embedder)

    def run_batch(batch: list[DocumentPath]) -> BatchOutcome:
        return steps.batch(
            batch,
            store,
            serial,
            stored,
            max_tokens=max_tokens,
            overlap_tokens=settings.doc_chunk_overlap_tokens,
            cleanup=mode,
            label=batch[0].source if len(batch) == 1 else f"{batch[0].source} +{len(batch) - 1}",
        )

    for batch, outcome in in_flight(run_batch, batched(files, DOCUMENTS_PER_BATCH)):
        for name in (
            "added",
            "updated",
            "unchanged",
            "chunks_written",
            "chunks_deleted",
            "embeddings_computed",
            "embeddings_reused",
        ):
            setattr(report, name, getattr(report, name) + getattr(outcome, name))
        report.quarantine += outcome.quarantine
        report.skipped_documents += outcome.skipped
        report.warnings += outcome.warnings
        expected.update(outcome.expected)
        present.update(outcome.sources)
        done += len(batch)
        if on_progress is not None:
            on_progress(done, len(files) + len(duplicates))
    if mode == "full":
        gone, chunks = steps.delete_missing(store, stored, present)
        report.deleted = len(gone)
        report.chunks_deleted += chunks
    steps.verify(store, expected, exact=mode != "none")
    report.collection_count = store.count()
    report.quarantined = len(report.quarantine)
    report.skipped = len(report.skipped_documents)
    path = write_quarantine(settings.quarantine_dir, run_id, report.quarantine)
    report.quarantine_path = str(path) if path else None
    report.duration_s = round(time.monotonic() - started, 3)
    return report
