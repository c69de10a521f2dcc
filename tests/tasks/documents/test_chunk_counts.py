"""Chunking with the local embedder's word-piece counts, counted once: the same chunks as
counting every chunk again (`chunk_document(counts_add_up=...)`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.documents import chunk_document, discover_documents, load_document
from tasks.embeddings import LocalOnnxEmbedder
from tests.conftest import REPO
from tests.support.docs_tree import build_tree

WORDS = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),  # lone surrogates cannot be encoded
        blacklist_characters=" \t\n\r\x0b\x0c\x85\xa0\u2028\u2029",
    ),
    min_size=1,
    max_size=140,  # past 100 characters a word is one [UNK]
)
TEXTS = st.lists(WORDS, min_size=1, max_size=6).map(" ".join)
JOINS = st.sampled_from([" ", "\n", "\n\n", "\t", " \n "])


@pytest.fixture(scope="module")
def embedder() -> LocalOnnxEmbedder:
    from tasks.model_files import missing_files

    model = REPO / "data" / "models" / "all-MiniLM-L6-v2"
    if missing_files(model):
        pytest.skip("local model files not provisioned (make setup)")
    return LocalOnnxEmbedder(model)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(TEXTS, min_size=2, max_size=4), join=JOINS)
def test_word_piece_counts_of_texts_joined_by_whitespace_add_up(
    embedder: LocalOnnxEmbedder, parts: list[str], join: str
) -> None:
    assert LocalOnnxEmbedder.TOKEN_COUNTS_ADD_UP
    counts = embedder.count_tokens([*parts, join.join(parts)])
    assert counts[-1] == sum(counts[:-1])


def test_chunks_counted_once_equal_chunks_counted_again(
    embedder: LocalOnnxEmbedder, tmp_path: Path
) -> None:
    """A docs tree's pages (headings, code, tables, long paragraphs cut by words) and the sample
    corpus, chunked with and without the shortcut at the ingest's budget and overlap."""
    tree = build_tree(tmp_path / "docs", 60, seed=3)
    found = discover_documents([tree.root, REPO / "data" / "documents"])
    checked = 0
    for path in found:
        try:
            document = load_document(path.path, root=path.root)
        except Exception:  # the tree's binary and empty pages: not chunked either way
            continue
        for budget, overlap in ((embedder.max_text_tokens, 40), (64, 16)):
            once = chunk_document(
                document, budget, overlap, count=embedder.count_tokens, counts_add_up=True
            )
            again = chunk_document(document, budget, overlap, count=embedder.count_tokens)
            assert [(c.id, c.text, c.token_count) for c in once] == [
                (c.id, c.text, c.token_count) for c in again
            ], path.source
            assert all(c.token_count <= budget for c in once)
            checked += len(once)
    assert checked > 500
