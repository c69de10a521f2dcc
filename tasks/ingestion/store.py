"""What ingestion asks of the store: which documents are unchanged, the vectors it already
holds, the writes and deletes, and whether it holds exactly the expected chunks after."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from tasks.documents import CHUNKER_VERSION, DEFAULT_MAX_BYTES, DocChunk, DocumentPath, file_hash
from tasks.embeddings import Embedder
from tasks.errors import DataQualityError, UsageError
from tasks.ingestion.prepare import PreparedDocument
from tasks.vectorstore import ChunkStore

CleanupMode = Literal["none", "incremental", "full"]
CLEANUP_MODES: tuple[str, ...] = ("none", "incremental", "full")


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
    """Vectors for `chunks`: stored ones by content hash (the hash of the text embedded, context
    line included), the rest computed once per text.

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
            missing.setdefault(chunk.content_hash, chunk.embedded_text)
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
