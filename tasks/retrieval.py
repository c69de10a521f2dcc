"""Search an ingested collection: the ranking `gristmill query` prints and `ask` answers from.

Plain functions without Prefect, so a search does not pay for importing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.embeddings import Embedder
from tasks.hybrid import candidate_count, fuse
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore, Hit, open_chroma


def open_store(settings: Settings, embedder: Embedder, collection: str | None) -> ChunkStore:
    """The collection to read; a name that does not exist is a ConfigurationError."""
    return ChunkStore(
        open_chroma(settings),
        collection or settings.collection,
        embedder.name,
        embedder.dimension,
        create=False,
    )


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
    """The `k` chunks best matching `text`, best first: the nearest `candidate_count(k)`
    re-ranked with BM25 (`tasks.hybrid`), or with `hybrid=False` the `k` nearest."""
    vector = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
    if not hybrid:
        return store.query(vector, k=k, where=where, include_embeddings=include_embeddings)
    candidates = store.query(
        vector, k=candidate_count(k), where=where, include_embeddings=include_embeddings
    )
    return fuse(text, candidates)[:k]
