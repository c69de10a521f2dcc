"""Key points that add to the summary: none repeats the summary or another key point (issue 14).

A reader sees the summary and then the key points. A key point whose words are mostly those
of one summary sentence, or of a key point kept before it, tells them nothing new, so every
engine's final notes pass through `distinct_key_points`. "Mostly" is more than half of the
point's content words (stemmed, stopwords left out); a speaker prefix ("Alice: ") is not
counted. The rule is deterministic and needs no model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tasks.summaries.engines.extractive.text import (
    CONVERSATIONAL,
    STOPWORDS,
    split_sentences,
    stem,
)
from tasks.summaries.models import MeetingNotes

REPEAT_SHARE = 0.5
"""A key point repeats a text when more than this share of its content words are in it."""

_WORD = re.compile(r"\w+(?:['-]\w+)*")
_PREFIX = re.compile(r"^([^:\n]{1,80}):\s+")


def point_terms(text: str, speakers: Iterable[str] = ()) -> frozenset[str]:
    """The content words of a key point or sentence, stemmed; a speaker prefix is left out."""
    match = _PREFIX.match(text)
    if match:
        names = {n.strip() for n in speakers} | {n.split(" (", 1)[0].strip() for n in speakers}
        if match.group(1).strip() in names:
            text = text[match.end() :]
    words = [w for w in _WORD.findall(text.lower()) if not w.isdigit()]
    content = [w for w in words if w not in STOPWORDS and w not in CONVERSATIONAL and len(w) > 1]
    return frozenset(stem(w) for w in (content or words))


def repeats(point: frozenset[str], other: frozenset[str]) -> bool:
    """True when more than `REPEAT_SHARE` of the point's content words are in `other`."""
    return bool(point) and len(point & other) > REPEAT_SHARE * len(point)


def distinct_points(points: Sequence[str], summary: str, speakers: Iterable[str] = ()) -> list[str]:
    """`points` without those that repeat a summary sentence or a point kept before them."""
    names = list(speakers)
    said = [point_terms(s, names) for s in split_sentences(summary, max_words=10_000)]
    kept: list[str] = []
    for point in points:
        terms = point_terms(point, names)
        if not terms or any(repeats(terms, other) for other in said):
            continue
        said.append(terms)
        kept.append(point)
    return kept


def distinct_key_points(notes: MeetingNotes) -> MeetingNotes:
    """`notes` whose key points neither repeat the summary nor each other."""
    points = distinct_points(notes.key_points, notes.summary, notes.participants)
    return notes.model_copy(update={"key_points": points})
