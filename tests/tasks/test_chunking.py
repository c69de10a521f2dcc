"""Chunker invariants, checked with hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.chunking import chunk_utterances, render_utterance
from tasks.summaries import MeetingNotes
from tasks.summaries.reduce import plan_reduce_groups
from tasks.tokens import count_tokens
from tasks.transcripts import Utterance

words = st.text(alphabet="abcdefghij klmnop.,!?", min_size=1, max_size=400).map(
    lambda s: s.strip() or "x"
)
utterance_lists = st.lists(
    st.tuples(st.sampled_from([None, "Alice", "Bob", "Dr. Chen"]), words), min_size=1, max_size=60
).map(lambda pairs: [Utterance(index=i, speaker=s, text=t) for i, (s, t) in enumerate(pairs)])


@settings(max_examples=60, deadline=None)
@given(utterance_lists, st.integers(16, 300), st.integers(0, 100))
def test_every_utterance_lands_in_order_within_budget(
    utterances: list[Utterance], max_tokens: int, overlap: int
) -> None:
    chunks = chunk_utterances(utterances, max_tokens, overlap)
    assert all(c.token_count <= max_tokens for c in chunks)
    assert all(c.token_count == count_tokens(c.text) for c in chunks)
    covered = [u.index for c in chunks for u in c.utterances]
    assert set(covered) == {u.index for u in utterances}
    assert chunks[0].first_utterance == 0
    assert chunks[-1].last_utterance == utterances[-1].index
    for previous, current in itertools.pairwise(chunks):
        # progress, and no gap: a chunk starts at or before the utterance after its predecessor
        assert current.last_utterance >= previous.last_utterance
        assert current.first_utterance <= previous.last_utterance + 1
        assert current.index == previous.index + 1


@settings(max_examples=30, deadline=None)
@given(utterance_lists, st.integers(16, 200))
def test_text_is_preserved_without_overlap(utterances: list[Utterance], max_tokens: int) -> None:
    chunks = chunk_utterances(utterances, max_tokens, 0)
    # pieces of a split utterance may be cut mid-word, so compare the characters
    joined = "".join(u.text for c in chunks for u in c.utterances)
    assert "".join(joined.split()) == "".join("".join(u.text for u in utterances).split())


def test_an_enormous_utterance_is_split_not_dropped() -> None:
    text = "The budget was approved after a long debate. " * 400
    chunks = chunk_utterances([Utterance(index=0, speaker="Ann", text=text)], 100, 10)
    assert len(chunks) > 10 and all(c.token_count <= 100 for c in chunks)
    assert {c.first_utterance for c in chunks} == {0}
    assert sum(render_utterance(u).count("approved") for c in chunks for u in c.utterances) >= 400


def test_reduce_groups_fit_the_budget_and_keep_order() -> None:
    notes = MeetingNotes(
        summary="x " * 200, key_points=[], action_items=[], decisions=[], participants=[]
    )
    groups = plan_reduce_groups([notes] * 9, budget_tokens=700)
    assert [i for g in groups for i in g] == list(range(9))
    assert all(len(g) >= 2 for g in groups) and len(groups) > 1
    assert plan_reduce_groups([notes] * 3, budget_tokens=100_000) == [[0, 1, 2]]
