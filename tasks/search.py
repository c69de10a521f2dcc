"""The ingested documents opened once for many searches: what `gristmill query` (one query or
a file of them), `gristmill api` and `gristmill mcp` search and answer through.

The embedder, the Chroma client and each collection's handle are made once and kept; every
search then goes through `tasks.retrieval.query_chunks` and every answer through
`tasks.answers.ask`, the same code `gristmill query` and `gristmill ask` run. Plain Python
without Prefect; safe to call from several threads at once (a web server's worker threads).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tasks.chroma_client import open_chroma, server_errors
from tasks.embeddings import Embedder, build_embedder, load_in_background
from tasks.errors import UsageError
from tasks.retrieval import open_store, query_chunks
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore, Hit, chunk_collections

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from tasks.answers import Answer
    from tasks.llm import LLM

# Seconds between checks that a kept collection's lexical index is in step with its chunks
# (another process may ingest meanwhile); a check is two counts.
LEXICAL_CHECK_S = 10.0


def hit_record(hit: Hit) -> dict[str, Any]:
    """One hit as `gristmill query --json` prints it (and the service and MCP tools return)."""
    return {
        "id": hit.id,
        "source": hit.metadata.get("source"),
        "heading": hit.metadata.get("heading"),
        "chunk_index": hit.metadata.get("chunk_index"),
        "text": hit.text,
        "score": round(hit.score, 4),
        "fused_score": hit.fused,
        "metadata": hit.metadata,
    }


class DocumentSearch:
    """One embedder, one Chroma client and the collections opened so far, kept for reuse."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        # One thread embeds a query: a few dozen tokens gain nothing from two, and the other
        # core is BM25's meanwhile (`lexical_ahead`). Measured on 10k chunks under load: two
        # threads took 14-21 ms a query, one 7-9 ms.
        self.embedder = embedder or build_embedder(settings, threads=1)
        self._lock = threading.Lock()
        self._client: ClientAPI | None = None
        self._stores: dict[str, ChunkStore] = {}
        self._checked: dict[str, float] = {}
        self._llm: LLM | None = None
        self._llm_built = False

    @property
    def engine(self) -> str:
        """What `ask` answers with: openai or extractive (offline)."""
        return "openai" if self.settings.llm_engine == "openai" else "extractive"

    def warm(self) -> None:
        """Load the model and open the default collection now, not on the first request."""
        self.embedder.embed(["warm up"])
        self.llm()
        with contextlib.suppress(Exception):  # a missing or unreachable store: said per request
            self.store(None)

    def preload(self) -> None:
        """Start loading the model in the background, so that a cold search overlaps it with
        importing chromadb and opening the store (`tasks.embeddings.load_in_background`)."""
        self._loading = load_in_background(self.embedder)

    def settle(self) -> None:
        """Wait for `preload`'s thread. Call before the process exits: an interpreter that
        shuts down while onnxruntime is still loading on a daemon thread aborts in C++
        ("terminate called without an active exception", exit -6; seen in a full test run when
        `query --queries` failed on a missing file at once)."""
        loading = getattr(self, "_loading", None)
        if loading is not None:
            loading.join(timeout=120)

    def client(self) -> ClientAPI:
        """The Chroma client, opened on first use (and again after a failed open)."""
        with self._lock:
            if self._client is None:
                self._client = open_chroma(self.settings)
            return self._client

    def store(self, collection: str | None) -> ChunkStore:
        """The collection's handle, opened once; its lexical index re-checked every
        LEXICAL_CHECK_S. A name that does not exist is CollectionNotFound (not remembered:
        it may be ingested later)."""
        name = collection or self.settings.collection
        client = self.client()
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                with server_errors():
                    store = open_store(self.settings, self.embedder, name, client)
                self._stores[name] = store
                self._checked[name] = time.monotonic()
        if time.monotonic() - self._checked[name] > LEXICAL_CHECK_S:
            self._checked[name] = time.monotonic()
            with server_errors():
                store.sync_lexical()
        return store

    def collections(self) -> list[dict[str, Any]]:
        """Each chunk collection's name and chunk count, by name."""
        client = self.client()
        with server_errors():
            return [
                {"name": name, "count": client.get_collection(name).count()}
                for name in chunk_collections(client)
            ]

    def llm(self) -> LLM | None:
        """The LLM `ask` answers with, built once (None: the extractive answer, offline)."""
        with self._lock:
            if not self._llm_built:
                from tasks.answers import llm_for

                self._llm = llm_for(self.settings)
                self._llm_built = True
            return self._llm

    def query(
        self,
        text: str,
        k: int = 5,
        where: dict[str, Any] | None = None,
        collection: str | None = None,
    ) -> list[Hit]:
        """The `k` chunks best matching `text`, best first: `gristmill query`'s ranking."""
        if not text.strip():
            raise UsageError("the query text is empty")
        store = self.store(collection)
        with server_errors(), _filter_errors(where):
            return query_chunks(text, store, self.embedder, k, where)

    def ask(
        self,
        question: str,
        k: int = 5,
        where: dict[str, Any] | None = None,
        collection: str | None = None,
    ) -> Answer:
        """`gristmill ask`'s answer (or refusal) to `question`."""
        from tasks.answers import ask

        llm = self.llm()
        with server_errors(), _filter_errors(where):
            return ask(question, lambda: self.store(collection), self.embedder, llm, k, where)


@contextlib.contextmanager
def _filter_errors(where: dict[str, Any] | None) -> Iterator[None]:
    """Chroma's rejection of a malformed `where` as a UsageError in words."""
    from chromadb.errors import InvalidArgumentError

    try:
        yield
    except (InvalidArgumentError, ValueError) as exc:
        if not where:
            raise
        raise UsageError(
            f"the filter {json.dumps(where, default=str)[:200]} is not valid: {exc}",
            hint='use {"KEY": VALUE}, or Chroma operators such as {"$and": [...]}',
        ) from None
