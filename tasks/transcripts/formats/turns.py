"""Turns before they are utterances: clean-up, splitting of over-long turns, numbering, times."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.errors import InputError
from tasks.transcripts.model import Utterance

MAX_LINE_CHARS = 100_000
"""A line longer than this must be splittable on sentences or whitespace, or the file fails."""
LONG_UTTERANCE_CHARS = 10_000
"""Utterances longer than this are split into sentence groups of about `GROUP_CHARS`."""
GROUP_CHARS = 1_000
"""Target size of a sentence group, and the limit for merging consecutive captions."""
MAX_WARNINGS = 20
"""Problems listed for one file; more are counted in one last line."""

CUE_TS = r"(?:\d+:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?"
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[\"'”’」』)\]]*\s*")
_WORD = re.compile(r"\S+\s*")


@dataclass
class Turn:
    """An utterance before whitespace clean-up, splitting and indexing."""

    speaker: str | None
    text: str
    start: float | None = None
    end: float | None = None
    where: str = ""
    split: bool = False


def collapse_spaces(text: str) -> str:
    return " ".join(text.split())


def spoken(turns: list[Turn]) -> Iterator[tuple[Turn, str]]:
    """Each turn with its text's runs of whitespace collapsed; turns left empty are dropped."""
    for turn in turns:
        text = collapse_spaces(turn.text)
        if text:
            yield turn, text


def to_utterances(turns: list[Turn]) -> list[Utterance]:
    """Drop empty turns, split over-long ones into sentence groups, number them from 0."""
    utterances: list[Utterance] = []
    for turn, text in spoken(turns):
        speaker = collapse_spaces(turn.speaker) if turn.speaker else None
        if turn.split or len(text) > LONG_UTTERANCE_CHARS:
            pieces = _sentence_groups(text, turn.where)
        else:
            pieces = [text]
        for i, piece in enumerate(pieces):
            utterances.append(
                Utterance(
                    index=len(utterances),
                    speaker=speaker or None,
                    text=piece,
                    start=turn.start if i == 0 else None,
                    end=turn.end if i == len(pieces) - 1 else None,
                )
            )
    return utterances


def _pieces(text: str) -> list[str]:
    """Sentences (with trailing space); sentences over `GROUP_CHARS` broken into words."""
    sentences: list[str] = []
    pos = 0
    for match in _SENTENCE_END.finditer(text):
        sentences.append(text[pos : match.end()])
        pos = match.end()
    if pos < len(text):
        sentences.append(text[pos:])
    pieces: list[str] = []
    for sentence in sentences:
        if len(sentence) > GROUP_CHARS:
            pieces.extend(_WORD.findall(sentence))
        else:
            pieces.append(sentence)
    return pieces


def _enormous(where: str, length: int) -> InputError:
    return InputError(
        f"enormous line: {where} has {length:,} characters with no sentence or whitespace"
        f" break to split it on (the limit is {MAX_LINE_CHARS:,})",
        hint="add line breaks, or check that the file is a transcript",
    )


def _sentence_groups(text: str, where: str) -> list[str]:
    """Split collapsed `text` into groups of whole sentences of about `GROUP_CHARS` each."""
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for piece in _pieces(text):
        if len(piece.rstrip()) > MAX_LINE_CHARS:
            raise _enormous(where or "the text", len(piece.rstrip()))
        if current and size + len(piece) > GROUP_CHARS:
            groups.append("".join(current).strip())
            current, size = [], 0
        current.append(piece)
        size += len(piece)
    if current:
        groups.append("".join(current).strip())
    return [group for group in groups if group]


def check_long_lines(text: str) -> None:
    """Fail on a line over `MAX_LINE_CHARS` that has no sentence or whitespace break."""
    if len(text) <= MAX_LINE_CHARS:
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            longest = max((len(p.rstrip()) for p in _pieces(collapse_spaces(line))), default=0)
            if longest > MAX_LINE_CHARS:
                raise _enormous(f"line {number}", longest)


def parse_seconds(value: object) -> float | None:
    """Seconds from a number, a numeric string or a `[hh:]mm:ss[.fff]` timestamp."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            if not re.fullmatch(CUE_TS, value):
                return None
            seconds = 0.0
            for part in value.replace(",", ".").split(":"):
                seconds = seconds * 60 + float(part)
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
