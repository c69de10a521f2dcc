"""The collection-wide lexical index: kept in step with a real on-disk Chroma, repaired after a
crash between the two writes, and fused into `query_chunks` so a chunk the embedder misses but
that holds the query's exact words is found."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tasks.chroma_client import open_chroma
from tasks.hybrid import candidate_count
from tasks.lexical import LexicalIndex, lexical_path, query_terms
from tasks.retrieval import open_store, open_store_for_writing, query_chunks
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore
from tests.support.embedders import HashEmbedder


def settings_for(data_dir: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, **values)  # type: ignore[call-arg]


def add(store: ChunkStore, embedder: HashEmbedder, source: str, texts: list[str]) -> list[str]:
    ids = [f"{source}#{i}" for i in range(len(texts))]
    metadatas = [
        {"source": source, "chunk_index": i, "chunk_count": len(texts), "document_hash": source}
        for i in range(len(texts))
    ]
    store.upsert(ids, embedder.embed(texts), texts, metadatas)
    return ids


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return open_store_for_writing(settings_for(tmp_path), HashEmbedder(), "docs")


def test_writes_and_deletes_follow_the_collection(store: ChunkStore) -> None:
    embedder = HashEmbedder()
    lexical = store.lexical
    assert lexical is not None
    add(store, embedder, "a.md", ["The remote's battery lasts a week.", "Rubber buttons."])
    add(store, embedder, "b.md", ["Quarterly budget review.", "Battery suppliers in Asia."])
    assert lexical.count() == store.count() == 4
    assert {i for i, _ in lexical.search("battery", 10)} == {"a.md#0", "b.md#1"}
    assert [i for i, _ in lexical.search("battery", 10, source="b.md")] == ["b.md#1"]
    # stemmed: "batteries" finds "battery"; replaced text is searched as replaced
    assert {i for i, _ in lexical.search("batteries", 10)} == {"a.md#0", "b.md#1"}
    add(store, embedder, "a.md", ["Solar charging instead.", "Rubber buttons."])
    assert {i for i, _ in lexical.search("battery", 10)} == {"b.md#1"}
    store.delete_source("b.md")
    assert lexical.search("battery", 10) == []
    assert lexical.count() == store.count() == 2
    assert not lexical.dirty()


@pytest.mark.parametrize(
    "question",
    ['budget" OR "x', "NEAR(budget review)", "budget AND -review", "source:budget", "*", '"'],
)
def test_query_syntax_in_the_question_is_text(store: ChunkStore, question: str) -> None:
    add(store, HashEmbedder(), "a.md", ["Quarterly budget review."])
    assert store.lexical is not None
    found = store.lexical.search(question, 5)  # never an FTS5 syntax error
    assert found == ([] if not query_terms(question) else found)


def test_a_crash_between_the_two_writes_is_repaired_from_chroma(
    store: ChunkStore, tmp_path: Path
) -> None:
    embedder = HashEmbedder()
    add(store, embedder, "a.md", ["alpha one", "beta two"])
    lexical = store.lexical
    assert lexical is not None
    # a process that died after writing Chroma and before the index: dirty, one chunk behind
    with pytest.raises(KeyboardInterrupt), lexical.writing():
        store.collection.upsert(
            ids=["c.md#0"],
            embeddings=embedder.embed(["gamma three"]),
            documents=["gamma three"],
            metadatas=[{"source": "c.md"}],
        )
        raise KeyboardInterrupt
    lexical.upsert(["ghost#0"], ["ghost.md"], ["gamma ghost"])  # and one it should not hold
    assert lexical.dirty()
    reopened = LexicalIndex(lexical_path(settings_for(tmp_path), "docs"))
    store.lexical = reopened
    assert store.sync_lexical() == 2
    assert reopened.ids() == store.all_ids() == {"a.md#0", "a.md#1", "c.md#0"}
    assert [i for i, _ in reopened.search("gamma", 5)] == ["c.md#0"]
    assert not reopened.dirty()
    assert store.sync_lexical() == 0  # in step: nothing to do


def test_an_index_that_is_missing_is_built_when_the_collection_is_opened(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    embedder = HashEmbedder()
    plain = ChunkStore(open_chroma(settings), "docs", embedder.name, embedder.dimension)
    add(plain, embedder, "a.md", ["written before the index existed: zebra"])
    assert not lexical_path(settings, "docs").exists()
    reading = open_store(settings, embedder, "docs")
    assert reading.lexical is not None
    assert [i for i, _ in reading.lexical.search("zebra", 5)] == ["a.md#0"]


class DigitBlindEmbedder(HashEmbedder):
    """An embedder that cannot see numbers (as small models barely do): part numbers, ticket
    ids and figures are exactly what it misses."""

    def embed(self, texts: list[str]) -> Any:
        return super().embed([re.sub(r"\w*\d\w*", " ", text) for text in texts])


def test_query_finds_the_exact_word_the_embedder_ranks_last(store: ChunkStore) -> None:
    """The one chunk naming the part number is one the embedder ranks below every candidate it
    would fetch; BM25 over the whole collection finds it and the fusion keeps it in the top 3."""
    embedder = DigitBlindEmbedder()
    topics = ["budget", "hiring", "roadmap", "design", "testing", "support", "pricing", "travel"]
    filler = [f"remark {i} on the {topics[i % 8]} and the plan for it" for i in range(150)]
    add(store, embedder, "notes.md", filler)
    add(store, embedder, "parts.md", ["order 4417 now"])
    question = "status of 4417"
    nearest = store.query(embedder.embed([question])[0], k=151)
    dense_rank = [h.id for h in nearest].index("parts.md#0")
    assert dense_rank >= 20, "the embedder must not find it for this test to mean anything"
    hits = query_chunks(question, store, embedder, k=3)
    assert "parts.md#0" in [h.id for h in hits]
    found = next(h for h in hits if h.id == "parts.md#0")
    assert found.fused is not None and found.text == "order 4417 now"
    assert found.metadata["source"] == "parts.md"
    store.lexical = None  # without the index: only what the embedder fetched can come back
    pool = {h.id for h in store.query(embedder.embed([question])[0], k=candidate_count(3))}
    assert {h.id for h in query_chunks(question, store, embedder, k=3)} <= pool


def test_the_context_line_is_indexed_and_rebuilt_from_chroma_but_not_stored_as_text(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    embedder = HashEmbedder()
    store = open_store_for_writing(settings, embedder, "docs")
    text = "Alice: the dock charges the remote overnight."
    store.upsert(
        ["kickoff#0"],
        embedder.embed([text]),
        [text],
        [{"source": "kickoff.txt", "context": "Meeting: budget-review · Speakers: Alice"}],
    )
    add(store, embedder, "other.md", ["the budget for the chip is small"])
    assert store.lexical is not None
    assert [i for i, _ in store.lexical.search("review", 5)] == ["kickoff#0"]
    assert [t for _, _, t in store.texts(["kickoff#0"])] == [text]
    # the index lost: rebuilt from Chroma, with the context line from the chunk's metadata
    store.lexical.close()
    lexical_path(settings, "docs").unlink()
    reading = open_store(settings, embedder, "docs")
    assert reading.lexical is not None
    assert [i for i, _ in reading.lexical.search("review", 5)] == ["kickoff#0"]
    assert reading.lexical.search("budget", 5)[0][0] in {"kickoff#0", "other.md#0"}
    assert len(reading.lexical.search("budget", 5)) == 2
