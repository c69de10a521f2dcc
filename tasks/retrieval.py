"""Search an ingested collection: the ranking `gristmill query` prints and `ask` answers from
(and the collection opened for writing, as ingest and the benchmarks that fill it open it).

Plain functions without Prefect, so a search does not pay for importing it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.chroma_client import open_chroma
from tasks.embeddings import Embedder
from tasks.hybrid import candidate_count, fuse, fuse_rankings
from tasks.lexical import open_lexical
from tasks.portable import make_portable
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore, Hit

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

# Candidates from each ranking before fusion (see `ranked`).
DENSE_CANDIDATES = 100
LEXICAL_CANDIDATES = 100


def open_store(
    settings: Settings,
    embedder: Embedder,
    collection: str | None,
    client: ClientAPI | None = None,
) -> ChunkStore:
    """The collection to read, with its lexical index brought in step (`tasks.lexical`); a
    name that does not exist is a CollectionNotFound. `client`: an open Chroma client to
    reuse (a long-running service opens one), else one is opened from the settings."""
    name = collection or settings.collection
    client = client or open_chroma(settings)
    store = ChunkStore(client, name, embedder.name, embedder.dimension, create=False)
    store.lexical = open_lexical(settings, name)
    store.sync_lexical()
    return store


def open_store_for_writing(
    settings: Settings, embedder: Embedder, collection: str | None = None
) -> ChunkStore:
    """The collection as ingest writes it: made if missing, its lexical index written in the
    same calls as Chroma (`tasks.lexical`), so the later searches find what was written."""
    name = collection or settings.collection
    store = ChunkStore(
        open_chroma(settings),
        name,
        embedder.name,
        embedder.dimension,
        lexical=open_lexical(settings, name),
    )
    return make_portable(store, open_store_for_writing, settings, embedder, name)


def query_chunks(
    text: str,
    store: ChunkStore,
    embedder: Embedder,
    k: int = 5,
    where: dict[str, Any] | None = None,
    *,
    include_embeddings: bool = False,
    hybrid: bool = True,
) -> list[Hit]:
    """The `k` chunks best matching `text`, best first (`ranked`), or with `hybrid=False` the
    `k` nearest by the embedder alone."""
    if not hybrid:
        vector = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
        return store.query(vector, k=k, where=where, include_embeddings=include_embeddings)
    lexical = lexical_ahead(text, store, k, where)
    vector = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
    return ranked(
        text, vector, store, k, where, include_embeddings=include_embeddings, lexical=lexical
    )[:k]


def lexical_ahead(
    text: str, store: ChunkStore, k: int, where: dict[str, Any] | None = None
) -> Future[list[tuple[str, float]]] | None:
    """BM25's part of `ranked(text, ..., k, where)` started on a thread now, so that it runs
    while the caller embeds the query (SQLite and onnxruntime both release the GIL); None when
    `ranked` will not use the index."""
    source = _source_filter(where)
    if store.lexical is None or (where and source is None):
        return None
    return _lexical_pool().submit(store.lexical.search, text, max(LEXICAL_CANDIDATES, k), source)


@cache
def _lexical_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")


def ranked(
    text: str,
    vector: np.ndarray,
    store: ChunkStore,
    k: int,
    where: dict[str, Any] | None = None,
    *,
    include_embeddings: bool = False,
    lexical: Future[list[tuple[str, float]]] | None = None,
) -> list[Hit]:
    """The best `k` chunks, best first (without the lexical index: more, for the caller to cut).

    With the collection's lexical index (`tasks.lexical`): the embedder's nearest
    `DENSE_CANDIDATES` and BM25's best `LEXICAL_CANDIDATES` over the whole collection (or one
    `source`), fused (`tasks.hybrid.fuse_rankings`), so a chunk the embedder ranks low but that
    holds the query's exact words is still found. Without one, or under a filter the index
    cannot apply, the nearest `candidate_count(k)` re-ranked by BM25 among themselves.
    `lexical`: BM25's part already started (`lexical_ahead` with the same arguments)."""
    source = _source_filter(where)
    if store.lexical is None or (where and source is None):
        candidates = store.query(
            vector, k=candidate_count(k), where=where, include_embeddings=include_embeddings
        )
        return fuse(text, candidates)
    dense = store.nearest_ids(vector, k=max(DENSE_CANDIDATES, k), where=where)
    best_words = (
        lexical.result()
        if lexical is not None
        else store.lexical.search(text, max(LEXICAL_CANDIDATES, k), source)
    )
    return fuse_rankings(
        dense,
        best_words,
        lambda ids: store.hits(ids, vector, include_embeddings=include_embeddings),
        limit=k,
    )


def _source_filter(where: dict[str, Any] | None) -> str | None:
    """The source a `{"source": ...}` filter asks for (the only filter the index applies)."""
    if where and set(where) == {"source"} and isinstance(where["source"], str):
        return where["source"]
    return None
