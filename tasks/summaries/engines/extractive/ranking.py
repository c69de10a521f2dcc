"""Sentence selection by greedy concept coverage, and the knobs that tune it."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tasks.summaries.engines.extractive.text import CONVERSATIONAL, STOPWORDS, stem, words_of


@dataclass(frozen=True)
class ExtractiveParams:
    """Tunable knobs (defaults measured on QMSum validation, see benchmarks/summary_quality.py)."""

    summary_ratio: float = 0.05
    """Words of chunk summary per word of chunk: partial summaries carry coverage to the end."""
    candidate_factor: float = 3.0
    """Candidate sentences kept per chunk, as a multiple of its summary sentences."""
    target_scale: float = 1.5
    """Final summary words = target_scale * sqrt(meeting words), clamped to the bounds below."""
    min_target_words: int = 120
    max_target_words: int = 250
    min_candidates: int = 8
    """Candidate sentences a chunk keeps at least (short chunks still feed the final pass)."""
    min_sentence_words: int = 6
    length_exponent: float = 0.5
    """A sentence's coverage gain is divided by (its words ** length_exponent)."""
    min_concept_df: int = 2
    """A concept counts once this many sentences mention it (drops one-off noise)."""
    summary_bonus: float = 0.2
    """Extra gain in `combine` for a candidate that a part selected for its own summary."""
    cue_bonus: float = 1.0
    """Extra gain for sentences that state the agenda or a decision (their words say so)."""
    attribute_summary: bool = True
    """Prefix summary sentences with their speaker ("Alice: ...")."""
    max_key_points: int = 5
    """Key points at most: one per equal stretch of the meeting, so they span its topics."""
    key_point_max_words: int = 25
    """Longest sentence that can be a key point: they are read as a list, short and dense."""
    key_point_length_exponent: float = 1.0
    """As `length_exponent`, for key points: their new concepts per word, the densest first."""


DEFAULT_PARAMS = ExtractiveParams()


def concepts_of(text: str) -> set[str]:
    """The concepts a sentence covers: its content words and its word pairs that are not two
    function words ("remote control", "the budget"), stemmed."""
    raw = words_of(text)
    stems = [stem(w) for w in raw]
    plain = [w in STOPWORDS or w in CONVERSATIONAL or len(w) < 2 for w in raw]
    concepts = {s for s, p, w in zip(stems, plain, raw, strict=True) if not p and not w.isdigit()}
    for i in range(len(raw) - 1):
        if not (plain[i] and plain[i + 1]):
            concepts.add(f"{stems[i]} {stems[i + 1]}")
    return concepts


def rank_by_coverage(
    texts: Sequence[str],
    *,
    eligible: Sequence[bool] | None = None,
    target_words: int | None = None,
    max_count: int | None = None,
    boost: Sequence[float] | None = None,
    covered: Iterable[str] = (),
    groups: Sequence[int] | None = None,
    params: ExtractiveParams = DEFAULT_PARAMS,
) -> list[int]:
    """Greedy concept coverage: repeatedly pick the sentence whose not-yet-covered concepts
    weigh most per sqrt(word) (a concept weighs the number of sentences that mention it).

    Stops at about `target_words` (skipping sentences that would overshoot) or `max_count`;
    returns indices in the order picked, best first. Covered concepts earn nothing again, so
    redundancy is removed by construction. Lazy evaluation keeps it fast (gains only shrink).
    `covered` concepts count as said already; with `groups`, at most one sentence per group.
    """
    concepts = [concepts_of(t) for t in texts]
    df = Counter(c for row in concepts for c in row)
    weight = {c: float(n) for c, n in df.items() if n >= params.min_concept_df}
    lengths = [max(len(t.split()), 1) for t in texts]
    norm = [length**params.length_exponent for length in lengths]
    if boost is not None:
        norm = [n / (1.0 + b) for n, b in zip(norm, boost, strict=True)]
    said = set(covered)
    taken: set[int] = set()

    def gain(i: int) -> float:
        return sum(weight.get(c, 0.0) for c in concepts[i] - said) / norm[i]

    heap = [(-gain(i), i) for i in range(len(texts)) if eligible is None or eligible[i]]
    heapq.heapify(heap)
    chosen: list[int] = []
    total = 0
    budget = target_words if target_words is not None else sum(lengths)
    slack = max(8, budget // 10)
    while heap and total < budget and (max_count is None or len(chosen) < max_count):
        _, i = heapq.heappop(heap)
        current = gain(i)
        if heap and current < -heap[0][0]:
            heapq.heappush(heap, (-current, i))
            continue
        if current <= 0:
            break
        if chosen and total + lengths[i] > budget + slack:
            continue
        if groups is not None:
            if groups[i] in taken:
                continue
            taken.add(groups[i])
        chosen.append(i)
        total += lengths[i]
        said |= concepts[i]
    return chosen


def target_words_for(meeting_words: int, params: ExtractiveParams = DEFAULT_PARAMS) -> int:
    """Length of a whole-meeting summary: grows with the square root of the meeting's length."""
    target = round(params.target_scale * math.sqrt(max(meeting_words, 0)))
    target = min(params.max_target_words, max(params.min_target_words, target))
    return int(max(1, min(target, meeting_words // 3)))
