"""Token-budgeted chunking of transcripts on utterance boundaries, with overlap.

Invariants (tested with hypothesis): every chunk fits the budget; every utterance lands in at
least one chunk, in order; an utterance too long for one chunk is split into pieces that keep
its index; overlap only repeats the tail of the previous chunk and never stalls progress.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel

from tasks.tokens import count_tokens, count_tokens_batch, split_by_tokens
from tasks.transcripts import Utterance

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Chunk(BaseModel):
    """A run of consecutive utterances that fits one model call."""

    index: int
    text: str
    token_count: int
    first_utterance: int
    last_utterance: int
    overlap_utterances: int = 0
    utterances: list[Utterance]

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def render_utterance(utterance: Utterance) -> str:
    """One line of prompt text: `Speaker: text`, or the bare text when nobody is named."""
    return f"{utterance.speaker}: {utterance.text}" if utterance.speaker else utterance.text


def _split_long(utterance: Utterance, max_tokens: int) -> list[Utterance]:
    """Cut an utterance that exceeds the budget into pieces, preferring sentence ends."""
    prefix_tokens = count_tokens(f"{utterance.speaker}: ") if utterance.speaker else 0
    budget = max(max_tokens - prefix_tokens - 1, 1)
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(utterance.text):
        candidate = f"{current} {sentence}".strip()
        if count_tokens(candidate) <= budget:
            current = candidate
            continue
        if current:
            pieces.append(current)
        if count_tokens(sentence) <= budget:
            current = sentence
        else:
            parts = split_by_tokens(sentence, budget)
            pieces.extend(parts[:-1])
            current = parts[-1]
    if current:
        pieces.append(current)
    return [utterance.model_copy(update={"text": piece.strip() or piece}) for piece in pieces]


def chunk_utterances(
    utterances: list[Utterance], max_tokens: int, overlap_tokens: int = 0
) -> list[Chunk]:
    """Pack utterances greedily into chunks of at most `max_tokens`, repeating a tail overlap."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    overlap_tokens = min(overlap_tokens, max_tokens // 2)
    units: list[Utterance] = []
    for utterance, tokens in zip(
        utterances, count_tokens_batch([render_utterance(u) for u in utterances]), strict=True
    ):
        units.extend(
            [utterance] if tokens + 1 <= max_tokens else _split_long(utterance, max_tokens)
        )
    costs = [c + 1 for c in count_tokens_batch([render_utterance(u) for u in units])]

    chunks: list[Chunk] = []
    start = 0
    overlap = 0
    while start < len(units):
        end = start
        used = 0
        while end < len(units) and (used + costs[end] <= max_tokens or end <= start + overlap):
            used += costs[end]
            end += 1
        members = units[start:end]
        text = "\n".join(render_utterance(u) for u in members)
        tokens = count_tokens(text)
        while tokens > max_tokens and end - start > overlap + 1:
            end -= 1
            members = units[start:end]
            text = "\n".join(render_utterance(u) for u in members)
            tokens = count_tokens(text)
        chunks.append(
            Chunk(
                index=len(chunks),
                text=text,
                token_count=tokens,
                first_utterance=members[0].index,
                last_utterance=members[-1].index,
                overlap_utterances=overlap,
                utterances=members,
            )
        )
        if end >= len(units):
            break
        # Next chunk starts with the tail of this one (within the overlap budget), but always
        # moves forward by at least one new unit.
        next_start = end
        carried = 0
        while (
            next_start - 1 > start
            and carried + costs[next_start - 1] <= overlap_tokens
            and carried + costs[next_start - 1] + costs[end] <= max_tokens
        ):
            next_start -= 1
            carried += costs[next_start]
        overlap = end - next_start
        start = next_start
    return chunks
