"""The vector store: Chroma behind a small class that takes the client as a parameter.

Rules that keep a collection trustworthy:
- vectors are always computed by gristmill's embedder and passed in; Chroma's default embedding
  function (which downloads a model) is never used;
- a collection records its embedding model and dimension, and opening it with another one fails
  instead of mixing vectors from two spaces;
- collections use cosine distance, so `score = 1 - distance` is the cosine similarity.

The client it takes, the writer lock and a lost server in words: `tasks.chroma_client`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from tasks.errors import CollectionNotFound, ConfigurationError
from tasks.portable import portable_reduce

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from tasks.lexical import LexicalIndex

Metadata = Mapping[str, str | int | float | bool | None]

MODEL_KEY = "embedding_model"
DIMENSION_KEY = "embedding_dimension"
# The collection beside each chunk collection that remembers the documents left out of it.
LEFT_OUT_SUFFIX = ".left-out"
# Chroma's longest collection name.
MAX_COLLECTION_NAME = 512
# Rows fetched per page when scanning a collection.
PAGE_SIZE = 1000
# Values per `$in` filter, well under SQLite's bound-variable limit.
IN_FILTER_SIZE = 500
# The metadata key of a chunk's context line (`tasks.documents.DocChunk.context`).
CONTEXT_KEY = "context"


def with_context(context: str, text: str) -> str:
    """What is embedded and indexed for a chunk: its context line (where it comes from), then
    its text. The store keeps the text alone as the chunk's document (what users read and
    cite) and the line in its metadata, so the lexical index can be rebuilt from the store."""
    return f"{context}\n{text}" if context else text


def indexed_text(text: str, metadata: Mapping[str, object] | None) -> str:
    """The text the lexical index holds for a stored chunk."""
    context = (metadata or {}).get(CONTEXT_KEY)
    return with_context(str(context), text) if context else text


class Hit(BaseModel):
    """One ranked search result."""

    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    """Cosine similarity to the query."""
    embedding: list[float] | None = None
    fused: float | None = None
    """The hybrid ranking's score, when the hits were fused (`tasks.hybrid.fuse`)."""


def _clean_metadata(metadata: Metadata) -> dict[str, str | int | float | bool]:
    """Chroma stores no None values: drop them."""
    return {key: value for key, value in metadata.items() if value is not None}


class ChunkStore:
    """One Chroma collection of chunks embedded by one model, written in batches."""

    def __init__(
        self,
        client: ClientAPI,
        collection_name: str,
        embedding_name: str,
        dimension: int,
        *,
        max_batch_size: int | None = None,
        create: bool = True,
        lexical: LexicalIndex | None = None,
    ) -> None:
        """`create=False` (for reading: query, ask) fails on a collection that does not exist
        instead of creating an empty one, so a misspelt name is an error, not "no results".
        `lexical`: the collection's full-text index (`tasks.lexical`), written with every
        upsert and delete."""
        self.client = client
        self.lexical = lexical
        self.name = collection_name
        self.embedding_name = embedding_name
        self.dimension = dimension
        limit = client.get_max_batch_size()
        self.batch_size = min(limit, max_batch_size) if max_batch_size else limit
        self.collection = self._open_collection(create)
        self._left_out: LeftOutLedger | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as the recipe that opened it (`open_store_for_writing`),
        opened there once per process; a store opened from parts cannot travel."""
        return portable_reduce(self)

    def left_out(self) -> LeftOutLedger:
        """The ledger of this collection's left-out documents (made on first use)."""
        if self._left_out is None:
            self._left_out = LeftOutLedger(self.client, self.name, self.batch_size)
        return self._left_out

    def _open_collection(self, create: bool = True) -> Collection:
        from chromadb.errors import ChromaError, NotFoundError

        if not create:
            try:
                self.client.get_collection(self.name)
            except (NotFoundError, ValueError):
                names = chunk_collections(self.client)
                raise CollectionNotFound(
                    f"there is no collection {self.name!r} in the vector store"
                    + (f" (it has: {', '.join(names[:10])})" if names else " (it is empty)"),
                    hint="ingest documents first (`gristmill ingest`) or pick one with "
                    "--collection",
                ) from None
        try:
            collection = self.client.get_or_create_collection(
                self.name,
                embedding_function=None,
                metadata={MODEL_KEY: self.embedding_name, DIMENSION_KEY: self.dimension},
                configuration={"hnsw": {"space": "cosine"}},
            )
        except (ChromaError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot open the Chroma collection {self.name!r}: {exc}"[:400]
            ) from None
        space = _distance_space(collection)
        if space not in (None, "cosine"):
            raise ConfigurationError(
                f"collection {self.name!r} uses {space} distance; gristmill needs cosine",
                hint="use another collection name (--collection)",
            )
        recorded = dict(collection.metadata or {})
        model, dimension = recorded.get(MODEL_KEY), recorded.get(DIMENSION_KEY)
        if model is None:
            if collection.count() > 0:
                raise ConfigurationError(
                    f"collection {self.name!r} was not created by gristmill: it records no "
                    "embedding model, so its vectors may come from another one",
                    hint="use another collection name (--collection)",
                )
            recorded.update({MODEL_KEY: self.embedding_name, DIMENSION_KEY: self.dimension})
            collection.modify(metadata=recorded)
        elif model != self.embedding_name or dimension != self.dimension:
            raise ConfigurationError(
                f"collection {self.name!r} holds vectors from {model} ({dimension} dimensions), "
                f"but this run embeds with {self.embedding_name} ({self.dimension} dimensions)",
                hint="use the same embedder, another collection (--collection), or delete the "
                "collection to re-index it with the new model",
            )
        return collection

    def count(self) -> int:
        return self.collection.count()

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray | Sequence[Sequence[float]],
        documents: Sequence[str],
        metadatas: Sequence[Metadata],
    ) -> int:
        """Insert or replace chunks by id, in batches the client accepts; returns rows written."""
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2:
            vectors = vectors.reshape(len(ids), -1)
        if not len(ids) == len(vectors) == len(documents) == len(metadatas):
            raise ValueError(
                f"upsert needs as many embeddings ({len(vectors)}), documents ({len(documents)}) "
                f"and metadatas ({len(metadatas)}) as ids ({len(ids)})"
            )
        if len(ids) and vectors.shape[1] != self.dimension:
            raise ConfigurationError(
                f"vectors have {vectors.shape[1]} dimensions; collection {self.name!r} holds "
                f"{self.dimension}-dimensional vectors from {self.embedding_name}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("upsert got duplicate ids in one call")
        with self._lexical_writing():
            for start in range(0, len(ids), self.batch_size):
                end = start + self.batch_size
                self.collection.upsert(
                    ids=list(ids[start:end]),
                    embeddings=vectors[start:end],
                    documents=list(documents[start:end]),
                    metadatas=[_clean_metadata(m) for m in metadatas[start:end]],
                )
            if self.lexical is not None:
                sources = [str(m.get("source") or "") for m in metadatas]
                texts = [indexed_text(d, m) for d, m in zip(documents, metadatas, strict=True)]
                self.lexical.upsert(ids, sources, texts)
        return len(ids)

    @contextlib.contextmanager
    def _lexical_writing(self) -> Iterator[None]:
        if self.lexical is None:
            yield
        else:
            with self.lexical.writing():
                yield

    def sync_lexical(self) -> int:
        """Repair the lexical index from the collection when it may be behind (a crash between
        the two writes, another writer on a Chroma server); returns the chunks it changed."""
        return 0 if self.lexical is None else self.lexical.sync(self)

    def all_ids(self) -> set[str]:
        return {i for page in self._pages(None, []) for i in page["ids"]}

    def texts(self, ids: Sequence[str], *, indexed: bool = False) -> Iterator[tuple[str, str, str]]:
        """(id, source, text) of each of `ids` that exists; with `indexed`, the text the
        lexical index holds (`indexed_text`: the chunk's context line, then its text)."""
        for start in range(0, len(ids), PAGE_SIZE):
            page = self.collection.get(
                ids=list(ids[start : start + PAGE_SIZE]), include=["metadatas", "documents"]
            )
            for chunk_id, metadata, text in zip(
                page["ids"], page["metadatas"] or [], page["documents"] or [], strict=True
            ):
                text = indexed_text(text or "", metadata) if indexed else text or ""
                yield chunk_id, str((metadata or {}).get("source") or ""), text

    def hits(
        self, ids: Sequence[str], embedding: np.ndarray, *, include_embeddings: bool = False
    ) -> dict[str, Hit]:
        """{id: Hit} for the ids that exist, scored by cosine similarity to `embedding`."""
        query = np.asarray(embedding, dtype=np.float32).reshape(-1)
        query = query / (float(np.linalg.norm(query)) or 1.0)
        found: dict[str, Hit] = {}
        for start in range(0, len(ids), PAGE_SIZE):
            page = self.collection.get(
                ids=list(ids[start : start + PAGE_SIZE]),
                include=["metadatas", "documents", "embeddings"],
            )
            vectors = page.get("embeddings")
            for i, chunk_id in enumerate(page["ids"]):
                vector = np.asarray(vectors[i], dtype=np.float32) if vectors is not None else None
                score = 0.0
                if vector is not None:
                    score = float(vector @ query) / (float(np.linalg.norm(vector)) or 1.0)
                found[chunk_id] = Hit(
                    id=chunk_id,
                    text=(page["documents"] or [])[i] or "",
                    metadata=dict((page["metadatas"] or [])[i] or {}),
                    score=score,
                    embedding=vector.tolist()
                    if include_embeddings and vector is not None
                    else None,
                )
        return found

    def _pages(self, where: dict[str, Any] | None, include: list[str]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.collection.get(
                where=where,
                include=include,  # type: ignore[arg-type]
                limit=PAGE_SIZE,
                offset=offset,
            )
            if not page["ids"]:
                return
            yield dict(page)
            if len(page["ids"]) < PAGE_SIZE:
                return
            offset += len(page["ids"])

    def ids_for_source(self, source: str) -> list[str]:
        """Ids of every chunk whose metadata `source` is `source`."""
        return [i for page in self._pages({"source": source}, []) for i in page["ids"]]

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete chunks by id (missing ids are ignored); returns how many were asked for."""
        with self._lexical_writing():
            for start in range(0, len(ids), self.batch_size):
                self.collection.delete(ids=list(ids[start : start + self.batch_size]))
            if self.lexical is not None:
                self.lexical.delete(ids)
        return len(ids)

    def delete_source(self, source: str) -> int:
        """Delete every chunk of `source`; returns how many there were."""
        return self.delete_ids(self.ids_for_source(source))

    def sources(self) -> dict[str, str]:
        """{source: document_hash} for every source in the collection.

        A source whose chunks disagree on the document hash, or number fewer than the
        `chunk_count` they record (a write interrupted half-way), maps to "" so that it never
        matches a real hash and gets re-ingested.
        """
        hashes: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        expected: dict[str, set[int]] = {}
        for page in self._pages(None, ["metadatas"]):
            for metadata in page["metadatas"]:
                if not metadata or "source" not in metadata:
                    continue
                source = str(metadata["source"])
                hashes.setdefault(source, set()).add(str(metadata.get("document_hash", "")))
                counts[source] = counts.get(source, 0) + 1
                if "chunk_count" in metadata:
                    expected.setdefault(source, set()).add(int(metadata["chunk_count"]))
        result: dict[str, str] = {}
        for source, found in hashes.items():
            complete = expected.get(source, {counts[source]}) == {counts[source]}
            result[source] = found.pop() if len(found) == 1 and complete else ""
        return result

    def embeddings_by_content_hash(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors for chunk texts already embedded (by `content_hash` metadata).

        Lets a re-run reuse vectors after a crash, a rename, or an edit elsewhere in a document,
        so no text is paid for twice. Safe because the collection holds one model's vectors.
        """
        found: dict[str, np.ndarray] = {}
        wanted = sorted(set(content_hashes))
        for start in range(0, len(wanted), IN_FILTER_SIZE):
            where = {"content_hash": {"$in": wanted[start : start + IN_FILTER_SIZE]}}
            for page in self._pages(where, ["embeddings", "metadatas"]):
                for metadata, vector in zip(page["metadatas"], page["embeddings"], strict=True):
                    if metadata and "content_hash" in metadata:
                        found.setdefault(str(metadata["content_hash"]), np.asarray(vector))
        return found

    def get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{id: metadata} for the ids that exist."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), PAGE_SIZE):
            page = self.collection.get(
                ids=list(ids[start : start + PAGE_SIZE]), include=["metadatas"]
            )
            for chunk_id, metadata in zip(page["ids"], page["metadatas"] or [], strict=True):
                found[chunk_id] = dict(metadata or {})
        return found

    def nearest_ids(
        self, embedding: np.ndarray | Sequence[float], k: int, where: dict[str, Any] | None = None
    ) -> list[str]:
        """The ids of the `k` nearest chunks, nearest first, without their texts or metadata
        (`hits` loads those for the few a ranking keeps)."""
        if k <= 0:
            return []
        result = self.collection.query(
            query_embeddings=self._query_vector(embedding),
            n_results=k,
            where=where or None,
            include=[],
        )
        return list(result["ids"][0])

    def query(
        self,
        embedding: np.ndarray | Sequence[float],
        k: int = 5,
        where: dict[str, Any] | None = None,
        *,
        include_embeddings: bool = False,
    ) -> list[Hit]:
        """The `k` nearest chunks, best first; score is the cosine similarity."""
        if k <= 0:
            return []
        vector = self._query_vector(embedding)
        include = ["documents", "metadatas", "distances"]
        if include_embeddings:
            include.append("embeddings")
        result = self.collection.query(
            query_embeddings=vector,
            n_results=k,
            where=where or None,
            include=include,  # type: ignore[arg-type]
        )
        ids = result["ids"][0]
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        vectors = result.get("embeddings")
        embeddings = vectors[0] if vectors is not None else None
        return [
            Hit(
                id=chunk_id,
                text=documents[i] or "",
                metadata=dict(metadatas[i] or {}),
                score=1.0 - float(distances[i]),
                embedding=None if embeddings is None else np.asarray(embeddings[i]).tolist(),
            )
            for i, chunk_id in enumerate(ids)
        ]

    def _query_vector(self, embedding: np.ndarray | Sequence[float]) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dimension:
            raise ConfigurationError(
                f"query vector has {vector.shape[1]} dimensions; collection {self.name!r} holds "
                f"{self.dimension}-dimensional vectors from {self.embedding_name}"
            )
        return vector


def chunk_collections(client: ClientAPI) -> list[str]:
    """The names of the chunk collections in the store, sorted (not the left-out ledgers)."""
    return sorted(c.name for c in client.list_collections() if not c.name.endswith(LEFT_OUT_SUFFIX))


def _distance_space(collection: Collection) -> str | None:
    """The collection's distance function, from its configuration (or legacy metadata)."""
    configuration = getattr(collection, "configuration", None) or {}
    for index in ("hnsw", "spann"):
        section = configuration.get(index) if isinstance(configuration, Mapping) else None
        if isinstance(section, Mapping) and section.get("space"):
            return str(section["space"])
    space = (collection.metadata or {}).get("hnsw:space")
    return str(space) if space else None


class LeftOut(BaseModel):
    """A document left out of a collection: the bytes and settings it was judged with, the
    verdict (`skipped` or `quarantined`) and why."""

    source: str
    document_hash: str
    key: str
    status: str
    reason: str
    failed_expectations: list[str] = []


class LeftOutLedger:
    """What was left out of a chunk collection and why, one record per source, in a Chroma
    collection beside it (`<name>.left-out`).

    It lives in the store, not in a file, so every writer of a shared Chroma server sees it,
    and it is only a cache: a lost or stale record costs a parse, never a wrong verdict,
    because a record is used only for the exact bytes and settings it was made with.
    Chroma wants a vector with every record; each gets the same one-dimensional zero vector.
    """

    def __init__(self, client: ClientAPI, collection_name: str, batch_size: int = 1000) -> None:
        name = collection_name + LEFT_OUT_SUFFIX
        if len(name) > MAX_COLLECTION_NAME:
            digest = hashlib.sha256(collection_name.encode()).hexdigest()[:16]
            name = f"{collection_name[: MAX_COLLECTION_NAME - 40]}-{digest}{LEFT_OUT_SUFFIX}"
        self.name = name
        self.batch_size = batch_size
        self.collection = client.get_or_create_collection(
            name, embedding_function=None, metadata={"gristmill": "left-out documents"}
        )

    @staticmethod
    def _id(source: str) -> str:
        return hashlib.sha256(source.encode()).hexdigest()

    def find(self, sources: Sequence[str]) -> dict[str, LeftOut]:
        """The records held for `sources` (whatever bytes they were made for)."""
        import json

        found: dict[str, LeftOut] = {}
        for start in range(0, len(sources), PAGE_SIZE):
            part = sources[start : start + PAGE_SIZE]
            page = self.collection.get(ids=[self._id(s) for s in part], include=["metadatas"])
            for metadata in page["metadatas"] or []:
                if not metadata:
                    continue
                record = dict(metadata)
                record["failed_expectations"] = json.loads(
                    str(record.get("failed_expectations") or "[]")
                )
                left_out = LeftOut.model_validate(record)
                found[left_out.source] = left_out
        return found

    def remember(self, records: Sequence[LeftOut]) -> None:
        import json

        for start in range(0, len(records), self.batch_size):
            part = records[start : start + self.batch_size]
            self.collection.upsert(
                ids=[self._id(r.source) for r in part],
                embeddings=np.zeros((len(part), 1), dtype=np.float32),
                metadatas=[
                    {
                        **r.model_dump(exclude={"failed_expectations"}),
                        "failed_expectations": json.dumps(r.failed_expectations),
                    }
                    for r in part
                ],
            )

    def forget(self, sources: Sequence[str]) -> None:
        ids = [self._id(s) for s in sources]
        for start in range(0, len(ids), self.batch_size):
            self.collection.delete(ids=ids[start : start + self.batch_size])

    def sources(self) -> set[str]:
        found: set[str] = set()
        offset = 0
        while True:
            page = self.collection.get(include=["metadatas"], limit=PAGE_SIZE, offset=offset)
            found.update(str(m.get("source")) for m in page["metadatas"] or [] if m)
            if len(page["ids"]) < PAGE_SIZE:
                return found
            offset += len(page["ids"])
