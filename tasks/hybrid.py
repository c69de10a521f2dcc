"""Hybrid ranking: the embedder's nearest chunks re-ordered with BM25 over the same chunks.

Dense retrieval finds paraphrases; exact words (names, numbers, jargon, the words a speaker
used) are what it misses and what BM25 is good at. The store returns `candidate_count(k)`
nearest chunks; BM25 (bm25s: Lucene's formula, English stop words, Snowball stems) ranks those
candidates again, with document frequencies from the candidates themselves; the two rankings are
merged by reciprocal-rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009, with their constant
60), which needs no score calibration between the two. Measured on QMSum validation in
benchmarks/README.md; no parameter was tuned on that split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

from tasks.vectorstore import Hit

RRF_K = 60
CANDIDATES_PER_RESULT = 4
MIN_CANDIDATES = 20


def candidate_count(k: int) -> int:
    """Nearest chunks to fetch for `k` results."""
    return max(k * CANDIDATES_PER_RESULT, MIN_CANDIDATES)


@cache
def _stemmer() -> Any:
    """English Snowball stemmer (PyStemmer): "receipts" matches "receipt"."""
    import Stemmer

    return Stemmer.Stemmer("english")


def lexical_scores(text: str, documents: list[str]) -> list[float]:
    """BM25 score of each document for `text`, document frequencies from `documents`."""
    import bm25s

    # bm25s sets its logger to DEBUG at import: one line per query on the terminal otherwise
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    stemmer = _stemmer()
    corpus = bm25s.tokenize(documents, stopwords="en", stemmer=stemmer, show_progress=False)
    query = bm25s.tokenize(
        [text], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    if not corpus.vocab or not query[0]:
        return [0.0] * len(documents)
    retriever = bm25s.BM25(k1=1.2, b=0.75)
    retriever.index(corpus, show_progress=False)
    known = [token for token in query[0] if token in corpus.vocab]
    if not known:
        return [0.0] * len(documents)
    return [float(score) for score in retriever.get_scores(known)]


def fuse(text: str, hits: list[Hit]) -> list[Hit]:
    """`hits` (nearest first) in reciprocal-rank-fusion order of their dense rank and their
    BM25 rank among themselves; ties keep the dense order. `score` stays the cosine similarity;
    `fused` is the fusion score the order follows."""
    if not hits:
        return []
    bm25 = lexical_scores(text, [hit.text for hit in hits])
    # chunks that share no word with the query get no lexical rank, not the last ones
    lexical = sorted((i for i in range(len(hits)) if bm25[i] > 0), key=lambda i: (-bm25[i], i))
    fused = [1.0 / (RRF_K + dense + 1) for dense in range(len(hits))]
    for rank, i in enumerate(lexical):
        fused[i] += 1.0 / (RRF_K + rank + 1)
    order = sorted(range(len(hits)), key=lambda i: (-fused[i], i))
    return [hits[i].model_copy(update={"fused": round(fused[i], 6)}) for i in order]


def fuse_rankings(
    dense: list[str],
    lexical: list[tuple[str, float]],
    fetch: Callable[[list[str]], dict[str, Hit]],
    limit: int,
) -> list[Hit]:
    """The best `limit` of the union of the embedder's nearest chunk ids (`dense`, best first)
    and the collection-wide BM25 ranking (`lexical`, best first, from `tasks.lexical`), in
    reciprocal-rank-fusion order; ties keep the dense order, then the lexical one. `fetch`
    loads only the chunks that made the cut (text, metadata, cosine score): fetching all ~200
    candidates' texts cost more than the nearest-neighbour search itself."""
    fused: dict[str, float] = {}
    for rank, chunk_id in enumerate(dense):
        fused[chunk_id] = 1.0 / (RRF_K + rank + 1)
    for rank, (chunk_id, _) in enumerate(lexical):
        fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    position = {chunk_id: i for i, chunk_id in enumerate(fused)}
    best = sorted(fused, key=lambda chunk_id: (-fused[chunk_id], position[chunk_id]))[:limit]
    known = fetch(best)
    return [known[i].model_copy(update={"fused": round(fused[i], 6)}) for i in best if i in known]
