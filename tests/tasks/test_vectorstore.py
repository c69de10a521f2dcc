"""ChunkStore against a real on-disk Chroma: writes, replacement, deletion, model checks, lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.chroma_client import acquire_writer_lock, open_chroma, writer_lock
from tasks.errors import ConfigurationError, StoreLockedError
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore
from tests.support.chroma_backends import on_backend, on_both_chroma_backends
from tests.support.chroma_process import ChromaServer
from tests.support.embedders import HashEmbedder

REPO = Path(__file__).resolve().parents[2]


def settings_for(data_dir: Path, **values: Any) -> Settings:
    """Settings from defaults and `values` only (no .env file)."""
    return Settings(_env_file=None, data_dir=data_dir, **values)  # type: ignore[call-arg]


@pytest.fixture
def client(tmp_path: Path, chroma_backend: ChromaServer | None) -> Any:
    return open_chroma(on_backend(settings_for(tmp_path), chroma_backend))


def store_for(client: Any, embedder: HashEmbedder, **kwargs: Any) -> ChunkStore:
    return ChunkStore(client, "docs", embedder.name, embedder.dimension, **kwargs)


def chunks_of(source: str, texts: list[str], document_hash: str) -> dict[str, list[Any]]:
    return {
        "ids": [f"{source}#{i}" for i in range(len(texts))],
        "documents": texts,
        "metadatas": [
            {
                "source": source,
                "chunk_index": i,
                "chunk_count": len(texts),
                "content_hash": f"c-{text}",
                "document_hash": document_hash,
                "heading": None,  # dropped: Chroma stores no None values
            }
            for i, text in enumerate(texts)
        ],
    }


def write(store: ChunkStore, embedder: HashEmbedder, chunks: dict[str, list[Any]]) -> int:
    return store.upsert(
        chunks["ids"], embedder.embed(chunks["documents"]), chunks["documents"], chunks["metadatas"]
    )


@on_both_chroma_backends
def test_upsert_query_replace_and_delete_by_source(client: Any) -> None:
    embedder = HashEmbedder()
    store = store_for(client, embedder)
    assert store.collection.metadata == {
        "embedding_model": "hash-embedder",
        "embedding_dimension": 64,
    }

    write(
        store,
        embedder,
        chunks_of("a.md", ["robots scan shelves", "batteries last nine hours"], "h1"),
    )
    write(store, embedder, chunks_of("b.md", ["expense receipts within thirty days"], "h2"))
    assert store.count() == 3
    assert store.sources() == {"a.md": "h1", "b.md": "h2"}

    hits = store.query(embedder.embed(["how long do batteries last"])[0], k=2)
    assert hits[0].id == "a.md#1"
    assert hits[0].text == "batteries last nine hours"
    assert hits[0].metadata["source"] == "a.md"
    assert "heading" not in hits[0].metadata
    assert hits[0].score > hits[1].score
    only_b = store.query(embedder.embed(["robots"])[0], k=5, where={"source": "b.md"})
    assert [h.id for h in only_b] == ["b.md#0"]
    assert store.query(embedder.embed(["x"])[0], k=0) == []

    # Same ids again: replaced, not duplicated.
    write(store, embedder, chunks_of("a.md", ["robots map aisles", "docks charge robots"], "h3"))
    assert store.count() == 3
    assert store.get(["a.md#0"])["a.md#0"]["document_hash"] == "h3"
    assert store.sources()["a.md"] == "h3"

    assert sorted(store.ids_for_source("a.md")) == ["a.md#0", "a.md#1"]
    assert store.delete_source("a.md") == 2
    assert store.ids_for_source("a.md") == []
    assert store.sources() == {"b.md": "h2"}
    store.delete_ids(["b.md#0", "never-existed"])
    assert store.count() == 0


def test_score_is_cosine_similarity(client: Any) -> None:
    store = ChunkStore(client, "cosine", "manual", 2)
    store.upsert(
        ["x", "diag"],
        np.array([[1.0, 0.0], [3.0, 4.0]]),  # not normalised: cosine ignores length
        ["x axis", "diagonal"],
        [{"source": "s"}, {"source": "s"}],
    )
    hits = store.query([2.0, 0.0], k=2)
    assert [h.id for h in hits] == ["x", "diag"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score == pytest.approx(0.6, abs=1e-5)
    assert dict(store.collection.configuration.get("hnsw") or {})["space"] == "cosine"
    with_vectors = store.query([1.0, 0.0], k=1, include_embeddings=True)
    assert with_vectors[0].embedding == pytest.approx([1.0, 0.0])


@on_both_chroma_backends
def test_sources_flag_interrupted_and_mixed_writes(client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("tasks.vectorstore.PAGE_SIZE", 2)  # several pages
    embedder = HashEmbedder()
    store = store_for(client, embedder)
    complete = chunks_of("done.md", ["one", "two", "three"], "h-done")
    partial = chunks_of("partial.md", ["one", "two", "three"], "h-new")
    write(store, embedder, complete)
    write(store, embedder, {k: v[:2] for k, v in partial.items()})  # killed after 2 of 3
    mixed = chunks_of("mixed.md", ["a", "b"], "h-old")
    write(store, embedder, mixed)
    write(
        store, embedder, {k: v[:1] for k, v in chunks_of("mixed.md", ["c", "d"], "h-new").items()}
    )
    assert store.sources() == {"done.md": "h-done", "partial.md": "", "mixed.md": ""}


def test_embeddings_are_found_by_content_hash(client: Any) -> None:
    embedder = HashEmbedder()
    store = store_for(client, embedder)
    write(store, embedder, chunks_of("a.md", ["alpha text", "beta text"], "h"))
    found = store.embeddings_by_content_hash(["c-beta text", "c-missing"])
    assert list(found) == ["c-beta text"]
    np.testing.assert_allclose(found["c-beta text"], embedder.embed(["beta text"])[0], atol=1e-6)


def test_writes_are_split_under_the_max_batch_size(client: Any, monkeypatch: Any) -> None:
    embedder = HashEmbedder()
    store = store_for(client, embedder, max_batch_size=7)
    assert store.batch_size == 7
    sizes: list[int] = []
    real_upsert = store.collection.upsert

    def recording_upsert(**kwargs: Any) -> None:
        sizes.append(len(kwargs["ids"]))
        real_upsert(**kwargs)

    monkeypatch.setattr(store.collection, "upsert", recording_upsert)
    texts = [f"chunk number {i}" for i in range(30)]
    assert write(store, embedder, chunks_of("big.md", texts, "h")) == 30
    assert sizes == [7, 7, 7, 7, 2]
    assert store.count() == 30
    assert len(store.ids_for_source("big.md")) == 30


def test_limit_comes_from_the_client(client: Any) -> None:
    store = ChunkStore(client, "docs", "m", 3, max_batch_size=10**9)
    assert store.batch_size == client.get_max_batch_size()


@on_both_chroma_backends
def test_another_embedding_model_is_refused(client: Any) -> None:
    embedder = HashEmbedder()
    write(store_for(client, embedder), embedder, chunks_of("a.md", ["text"], "h"))
    with pytest.raises(ConfigurationError) as caught:
        ChunkStore(client, "docs", "text-embedding-3-small", 1536)
    message = str(caught.value)
    assert "hash-embedder (64 dimensions)" in message
    assert "text-embedding-3-small (1536 dimensions)" in message
    with pytest.raises(ConfigurationError, match="32 dimensions"):
        ChunkStore(client, "docs", "hash-embedder", 32)
    with pytest.raises(ConfigurationError, match="vectors have 8 dimensions"):
        store_for(client, embedder).upsert(["x"], np.ones((1, 8)), ["x"], [{"source": "x"}])


@on_both_chroma_backends
def test_collections_made_elsewhere(client: Any) -> None:
    foreign = client.create_collection(
        "foreign", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    foreign.add(ids=["1"], embeddings=[[1.0, 0.0]], documents=["d"])
    with pytest.raises(ConfigurationError, match="records no embedding model"):
        ChunkStore(client, "foreign", "m", 2)
    client.create_collection(
        "empty", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    adopted = ChunkStore(client, "empty", "m", 2)
    assert adopted.collection.metadata == {"embedding_model": "m", "embedding_dimension": 2}
    client.create_collection(
        "euclid", embedding_function=None, configuration={"hnsw": {"space": "l2"}}
    )
    with pytest.raises(ConfigurationError, match="uses l2 distance"):
        ChunkStore(client, "euclid", "m", 2)
    with pytest.raises(ConfigurationError, match="cannot open the Chroma collection"):
        ChunkStore(client, "x", "m", 2)  # names need 3+ characters


@on_both_chroma_backends
def test_reading_a_collection_that_does_not_exist_names_the_ones_that_do(client: Any) -> None:
    ChunkStore(client, "handbook", "m", 2).left_out()  # its ledger is not a collection to name
    with pytest.raises(ConfigurationError) as raised:
        ChunkStore(client, "handbok", "m", 2, create=False)  # a typo
    assert str(raised.value).startswith(
        "there is no collection 'handbok' in the vector store (it has: handbook)"
    )
    assert "gristmill ingest" in str(raised.value)
    assert sorted(c.name for c in client.list_collections()) == [
        "handbook",
        "handbook.left-out",
    ]  # none created
    assert ChunkStore(client, "handbook", "m", 2, create=False).count() == 0


def test_writer_lock_held_by_another_process(tmp_path: Path) -> None:
    chroma_dir = tmp_path / "chroma"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from tasks.chroma_client import acquire_writer_lock
                lock = acquire_writer_lock(Path({str(chroma_dir)!r}))
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as caught:
            acquire_writer_lock(chroma_dir)
        assert f"pid {holder.pid}" in str(caught.value)
        assert "GRISTMILL_CHROMA_HOST" in str(caught.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    # The kernel released the lock when the holder exited.
    with acquire_writer_lock(chroma_dir) as lock:
        with pytest.raises(StoreLockedError):
            acquire_writer_lock(chroma_dir)
        assert lock.path == chroma_dir
    acquire_writer_lock(chroma_dir).release()


def test_writer_lock_is_skipped_for_a_chroma_server(tmp_path: Path) -> None:
    on_disk = settings_for(tmp_path)
    with writer_lock(on_disk), pytest.raises(StoreLockedError):
        acquire_writer_lock(on_disk.chroma_dir)
    with writer_lock(settings_for(tmp_path, chroma_host="127.0.0.1")):
        acquire_writer_lock(on_disk.chroma_dir).release()


def test_the_left_out_ledger_keeps_one_record_per_source(client: Any) -> None:
    from tasks.vectorstore import LeftOut, LeftOutLedger

    ledger = ChunkStore(client, "handbook", "m", 2).left_out()
    first = LeftOut(
        source="a.md", document_hash="h1", key="k", status="skipped", reason="empty file"
    )
    bad = LeftOut(
        source="b|c.md", document_hash="h2", key="k", status="quarantined",
        reason="data quality", failed_expectations=["token_count: too long"],
    )  # fmt: skip
    ledger.remember([first, bad])
    ledger.remember([first.model_copy(update={"document_hash": "h3"})])
    assert ledger.find(["a.md", "b|c.md", "missing.md"]) == {
        "a.md": first.model_copy(update={"document_hash": "h3"}),
        "b|c.md": bad,
    }
    ledger.forget(["a.md"])
    assert ledger.sources() == {"b|c.md"}
    long = LeftOutLedger(client, "x" * 512)
    assert len(long.name) <= 512 and long.name.endswith(".left-out")


def test_chroma_s_unflushed_segment_race_is_retried_like_a_lost_server() -> None:
    """chroma-core/chroma#4212: a server answers a read of a just-created collection with
    "Nothing found on disk"; the ingest batch's retry condition takes StoreUnavailableError."""
    from chromadb.errors import InternalError

    from tasks.chroma_client import server_errors
    from tasks.errors import StoreUnavailableError

    race = "Internal error: Error creating hnsw segment reader: Nothing found on disk"
    with (
        pytest.raises(StoreUnavailableError, match="could not read its own index yet"),
        server_errors(),
    ):
        raise InternalError(race)
    with pytest.raises(InternalError, match="something else"), server_errors():
        raise InternalError("something else")
