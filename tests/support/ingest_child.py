"""An ingest in a child process that SIGKILLs itself at a chosen point, for crash tests.

    python -m tests.support.ingest_child DATA_DIR BEFORE AFTER POINT N

Ingests the folder BEFORE (to completion), then the folder AFTER (the same sources, edited)
into the same collection, and kills itself with SIGKILL, like `kill -9`, at the Nth event
POINT of the second run:
- `embed`: inside the Nth embedding call, before it returns its vectors;
- `upsert`: right after the Nth write call to Chroma returns (a batch's chunks are written
  in several calls, so this leaves documents half-written);
- `delete`: right before the Nth delete call, after the batch's upserts (new chunks in,
  stale ones not yet out);
- `left-out-upsert`: right after the Nth write of the verdicts on files left out (the
  `LeftOutLedger`), so some are remembered and others not.
Nothing of the pipeline is replaced: the real `ingest_files`, a real on-disk Chroma; the hooks
only count calls and pass them on. Exits 3 if the point was never reached.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tasks.embeddings import Vectors
from tests.support.embedders import HashEmbedder

COLLECTION = "docs"
DOCUMENTS_PER_BATCH = 2
WRITE_BATCH = 3


class Tripwire:
    """Counts events and kills this process at the Nth one of a kind."""

    def __init__(self, point: str, nth: int) -> None:
        self.point, self.nth = point, nth
        self.seen = 0
        self.armed = False
        self._lock = threading.Lock()

    def event(self, point: str) -> None:
        if not self.armed or point != self.point:
            return
        with self._lock:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)


class TrippingEmbedder(HashEmbedder):
    def __init__(self, tripwire: Tripwire) -> None:
        super().__init__()
        self.tripwire = tripwire

    def embed(self, texts: list[str]) -> Vectors:
        vectors = super().embed(texts)
        self.tripwire.event("embed")
        return vectors


class TrippingCollection:
    """A Chroma collection whose upserts and deletes trip the wire; the rest passes through."""

    def __init__(self, collection: Any, tripwire: Tripwire, prefix: str = "") -> None:
        self._collection = collection
        self._tripwire = tripwire
        self._prefix = prefix

    def upsert(self, **kwargs: Any) -> Any:
        result = self._collection.upsert(**kwargs)
        self._tripwire.event(self._prefix + "upsert")
        return result

    def delete(self, **kwargs: Any) -> Any:
        self._tripwire.event(self._prefix + "delete")
        return self._collection.delete(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def settings_for(data_dir: Path) -> Any:
    from tasks.settings import Settings

    return Settings(data_dir=data_dir, doc_chunk_tokens=60, doc_chunk_overlap_tokens=0)


def main(argv: list[str]) -> int:
    import tasks.ingestion.driver
    from tasks.chroma_client import open_chroma
    from tasks.documents import discover_documents
    from tasks.vectorstore import ChunkStore

    data_dir, before, after, point, nth = argv
    tasks.ingestion.driver.DOCUMENTS_PER_BATCH = DOCUMENTS_PER_BATCH
    settings = settings_for(Path(data_dir))
    tripwire = Tripwire(point, int(nth))
    embedder = TrippingEmbedder(tripwire)
    store = ChunkStore(
        open_chroma(settings), COLLECTION, embedder.name, embedder.dimension,
        max_batch_size=WRITE_BATCH,
    )  # fmt: skip
    tasks.ingestion.ingest_files(
        discover_documents([Path(before)]), store, embedder, settings, cleanup="full"
    )
    store.collection = TrippingCollection(store.collection, tripwire)  # type: ignore[assignment]
    ledger = store.left_out()
    ledger.collection = TrippingCollection(ledger.collection, tripwire, "left-out-")  # type: ignore[assignment]
    tripwire.armed = True
    tasks.ingestion.ingest_files(
        discover_documents([Path(after)]), store, embedder, settings, cleanup="full"
    )
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
