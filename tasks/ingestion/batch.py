"""One document batch, planned, loaded, checked, embedded and written (`ingest_batch_plain`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tasks.documents import DEFAULT_MAX_BYTES, DocumentPath, file_hash
from tasks.embeddings import Embedder
from tasks.ingestion.checks import check_batch
from tasks.ingestion.left_out import left_out_key, remember_verdicts, remembered
from tasks.ingestion.prepare import PreparedDocument, chunking_key, prepare_documents
from tasks.ingestion.report import QuarantineRecord, SkipRecord
from tasks.ingestion.store import CleanupMode, is_unchanged, unchanged_files, write_documents
from tasks.vectorstore import ChunkStore, LeftOut

if TYPE_CHECKING:
    from tasks.settings import Settings


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


@dataclass
class KnownFiles:
    """Files a collection answers for without reading them."""

    unchanged: set[str]
    """Sources whose bytes and chunking match their stored chunks (`unchanged_files`)."""
    held: dict[str, LeftOut]
    """The left-out ledger's records of the other sources, whatever their bytes."""
    skipped: list[SkipRecord]
    quarantined: list[QuarantineRecord]
    """The remembered verdicts made for exactly these bytes and settings."""

    @property
    def sources(self) -> set[str]:
        return (
            self.unchanged | {r.source for r in self.skipped} | {r.source for r in self.quarantined}
        )


def known_files(
    paths: Sequence[DocumentPath],
    store: ChunkStore,
    stored: dict[str, str],
    chunking: str,
    max_bytes: int,
    hashes: dict[str, str | None],
) -> KnownFiles:
    """What `store` already says about `paths` (hashed in `hashes`): unchanged files, and files
    left out before with the same bytes and settings; neither is parsed nor checked again."""
    unchanged = unchanged_files(paths, stored, store, chunking, max_bytes, hashes)
    held = store.left_out().find(sorted(s for s, h in hashes.items() if h and s not in unchanged))
    skipped, quarantined = remembered(held, hashes, left_out_key(chunking, max_bytes))
    return KnownFiles(unchanged, held, skipped, quarantined)


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
    context: bool = False,
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
    chunking = chunking_key(max_tokens, overlap_tokens, json_text_field, context)
    hashes = {p.source: file_hash(p.path, max_bytes) for p in paths}
    known = known_files(paths, store, stored, chunking, max_bytes, hashes)
    outcome.unchanged = len(known.unchanged)
    skipped_before, quarantined_before, held = known.skipped, known.quarantined, known.held
    prepared, quarantine, skipped_documents = prepare_documents(
        [p for p in paths if p.source not in known.sources],
        embedder,
        max_tokens=max_tokens,
        overlap_tokens=overlap_tokens,
        json_text_field=json_text_field,
        max_bytes=max_bytes,
        context=context,
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
        store.left_out(),
        hashes,
        left_out_key(chunking, max_bytes),
        [*skipped_documents, *quarantine, *rejected],
        forget=[item.source for item in to_write if item.source in held],
    )
    outcome.chunks_written = written
    outcome.chunks_deleted = deleted
    outcome.embeddings_computed = computed
    outcome.embeddings_reused = reused
    return outcome


def needs_work(
    files: Sequence[DocumentPath], settings: Settings, embedder: Embedder, collection: str
) -> bool:
    """Whether an ingest of `files` into `collection` would load, check or embed any of them,
    rather than answer every one from the collection as `ingest_batch_plain` does (unchanged,
    or left out before with the same bytes: `known_files`; a file with no hash is left out by
    loading alone). When none would, the CLI loads neither the embedding model nor
    great-expectations. True when it cannot tell (no such collection yet, a store it cannot
    read): the run then finds out.

    Reads only the files' own chunks and ledger entries, a slice of files at a time, and stops
    at the first slice with work: a first ingest answers after one slice."""
    from tasks.chroma_client import open_chroma
    from tasks.ingestion.prepare import chunk_budget

    # one file per source, as `driver.unique_sources` keeps them (its module imports Prefect);
    # the duplicates' verdict needs no reading either
    first: dict[str, DocumentPath] = {}
    for found in files:
        first.setdefault(found.source, found)
    unique = list(first.values())
    try:
        store = ChunkStore(
            open_chroma(settings), collection, embedder.name, embedder.dimension, create=False
        )
        chunking = chunking_key(
            chunk_budget(settings.doc_chunk_tokens, embedder),
            settings.doc_chunk_overlap_tokens,
            "text",  # ingest_batch_plain's defaults, as the flow calls it
            settings.doc_chunk_context,
        )
        for start in range(0, len(unique), _SLICE):
            part = unique[start : start + _SLICE]
            hashes = {f.source: file_hash(f.path, DEFAULT_MAX_BYTES) for f in part}
            # as if stored with these hashes: `unchanged_files` then checks every chunk's own
            # hash, chunking and count, so only the files' chunks are read, not the collection's
            claimed = {source: h for source, h in hashes.items() if h}
            known = known_files(part, store, claimed, chunking, DEFAULT_MAX_BYTES, hashes)
            # no hash: empty, too large or unreadable, which loading alone says
            if any(h is not None and s not in known.sources for s, h in hashes.items()):
                return True
    except Exception:  # only a hint for what to load early: the run reports any real problem
        return True
    return False


_SLICE = 256
"""Files per metadata query of `needs_work`."""
