"""Search an ingested collection: the ranking `gristmill query` prints and `ask` answers from.

Plain functions without Prefect, so a search does not pay for importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.chroma_client import open_chroma
from tasks.embeddings import Embedder
from tasks.hybrid import candidate_count, fuse, fuse_rankings
from tasks.lexical import open_lexical
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
    vector = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
    if not hybrid:
        return store.query(vector, k=k, where=where, include_embeddings=include_embeddings)
    return ranked(text, vector, store, k, where, include_embeddings=include_embeddings)[:k]


def ranked(
    text: str,
    vector: np.ndarray,
    store: ChunkStore,
    k: int,
    where: dict[str, Any] | None = None,
    *,
    include_embeddings: bool = False,
) -> list[Hit]:
    """The best `k` chunks, best first (without the lexical index: more, for the caller to cut).

    With the collection's lexical index (`tasks.lexical`): the embedder's nearest
    `DENSE_CANDIDATES` and BM25's best `LEXICAL_CANDIDATES` over the whole collection (or one
    `source`), fused (`tasks.hybrid.fuse_rankings`), so a chunk the embedder ranks low but that
    holds the query's exact words is still found. Without one, or under a filter the index
    cannot apply, the nearest `candidate_count(k)` re-ranked by BM25 among themselves."""
    source = _source_filter(where)
    if store.lexical is None or (where and source is None):
        candidates = store.query(
            vector, k=candidate_count(k), where=where, include_embeddings=include_embeddings
        )
        return fuse(text, candidates)
    dense = store.query(
        vector, k=max(DENSE_CANDIDATES, k), where=where, include_embeddings=include_embeddings
    )
    lexical = store.lexical.search(text, max(LEXICAL_CANDIDATES, k), source)
    return fuse_rankings(
        dense,
        lexical,
        lambda ids: store.hits(ids, vector, include_embeddings=include_embeddings),
        limit=k,
    )


def _source_filter(where: dict[str, Any] | None) -> str | None:
    """The source a `{"source": ...}` filter asks for (the only filter the index applies)."""
    if where and set(where) == {"source"} and isinstance(where["source"], str):
        return where["source"]
    return None
