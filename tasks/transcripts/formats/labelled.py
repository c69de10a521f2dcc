"""Plain, labelled ("Alice: ...") and Markdown transcripts: a turn per label or paragraph."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from tasks.transcripts.formats.turns import Turn, parse_seconds

# fmt: off
_NAME_PARTICLES = frozenset({
    "al", "bin", "da", "de", "del", "della", "den", "der", "di", "du", "el", "la", "le", "of",
    "the", "van", "von", "y",
})
# words that often open a line of prose or notes with a colon but are not speakers
_NOT_SPEAKERS = frozenset({
    "action items", "agenda", "attendees", "background", "caution", "cc", "conclusion",
    "context", "date", "decision", "decisions", "duration", "edit", "example", "from", "fwd",
    "important", "introduction", "location", "nb", "next steps", "note", "notes", "overview",
    "participants", "ps", "re", "recording", "reference", "references", "sent", "source",
    "sources", "speakers", "subject", "summary", "tip", "title", "to", "todo", "topic",
    "update", "warning",
})
# fmt: on

_TS = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d{1,3})?"
_NAME = r"[^\W\d_][\w'’.\-]*(?:[ \t]+[\w'’.\-]+){0,3}"
_LABEL = re.compile(
    rf"""(?:[-*+•]\s+|\d+[.)]\s+|>+\s*)?
    [*_]{{0,2}}
    (?:[\[(]?(?P<ts1>{_TS})[\])]?\s*[-–—]?\s*)?
    [*_]{{0,2}}(?P<name>{_NAME})[*_]{{0,2}}
    (?:\s*[\[(](?P<ts2>{_TS})[\])])?
    [*_]{{0,2}}\s*:[*_]{{0,2}}(?:\s+|$)
    (?P<text>.*)""",
    re.VERBOSE,
)
_LABEL_LINE = re.compile(
    rf"""[*_]{{0,2}}(?P<name>{_NAME})[*_]{{0,2}}\s*
    (?:\s[\[(]?(?P<ts>{_TS})[\])]?|[\[(](?P<tsb>{_TS})[\])])""",
    re.VERBOSE,
)
_MD_SKIP = re.compile(r"#{1,6}(?:\s|$)|([-*_])(?:\s*\1){2,}$|<!--.*-->$")
_MD_PREFIX = re.compile(r"^(?:(?:>\s?)+|(?:[-*+]|\d+[.)])\s+)")


class Label(NamedTuple):
    name: str
    text: str
    start: float | None


@lru_cache(maxsize=4096)
def _is_speaker_name(name: str) -> bool:
    words = name.split()
    if not words or len(name) > 40 or not words[0][0].isupper():
        return False
    if name.casefold() in _NOT_SPEAKERS:
        return False
    return all(
        word[0].isupper() or word.isdigit() or word.casefold() in _NAME_PARTICLES
        for word in words[1:]
    )


def match_label(line: str) -> Label | None:
    """A speaker label at the start of `line`, e.g. "Alice:", "[00:01:02] Dr. Smith:"."""
    if ":" not in line[:160]:
        return None
    text = ""
    match = _LABEL.match(line)
    if match:
        text, ts = match["text"], match["ts1"] or match["ts2"]
    elif len(line) <= 80 and (match := _LABEL_LINE.fullmatch(line)):
        ts = match["ts"] or match["tsb"]
    else:
        return None
    name = match["name"].strip("_").strip()
    if not _is_speaker_name(name):
        return None
    return Label(name, text, parse_seconds(ts) if ts else None)


def line_turns(text: str, *, markdown: bool, force_speakers: bool) -> tuple[bool, list[Turn]]:
    """Turns of a plain or labelled text (or Markdown) file; True when speaker labels were used."""
    lines = text.split("\n")
    if markdown and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is not None:
            lines[: end + 1] = [""] * (end + 1)
    entries: list[_Entry] = []
    for number, raw in enumerate(lines, 1):
        line: str | None = raw.strip()
        if markdown and line:
            line = None if _MD_SKIP.match(line) else _MD_PREFIX.sub("", line, count=1).strip()
        entries.append(_Entry(number, line, match_label(line) if line else None))
    if force_speakers or _looks_labelled(entries):
        return True, _speaker_turns(entries)
    return False, _plain_turns(entries)


class _Entry(NamedTuple):
    number: int
    line: str | None
    """Stripped text; "" for a blank line, None for a Markdown heading or rule."""
    label: Label | None


def _looks_labelled(entries: list[_Entry]) -> bool:
    """Half the lines or half the paragraphs start with a label, or three labels reuse names."""
    lines = [entry.label for entry in entries if entry.line]
    names = [label.name for label in lines if label]
    if not names:
        return False
    starts = [
        entry.label
        for i, entry in enumerate(entries)
        if entry.line and (i == 0 or not entries[i - 1].line)
    ]
    labelled_starts = sum(1 for label in starts if label)
    return (
        2 * len(names) >= len(lines)
        or (2 * labelled_starts >= len(starts) and (len(names) >= 2 or len(starts) == 1))
        or (len(names) >= 3 and len(set(names)) < len(names))
    )


def _speaker_turns(entries: list[_Entry]) -> list[Turn]:
    """A label starts a turn; unlabelled lines continue it; Markdown headings end it."""
    turns: list[Turn] = []
    current: Turn | None = None
    for number, line, label in entries:
        if label:
            current = Turn(label.name, label.text, label.start, where=f"line {number}")
            turns.append(current)
        elif line is None:
            current = None
        elif not line:
            continue
        elif current is None:
            current = Turn(None, line, where=f"line {number}")
            turns.append(current)
        else:
            current.text += "\n" + line
    return turns


def _plain_turns(entries: list[_Entry]) -> list[Turn]:
    """Paragraphs become turns when blank lines separate them; otherwise every line does."""
    paragraphs = sum(
        1 for i, entry in enumerate(entries) if entry.line and (i == 0 or not entries[i - 1].line)
    )
    has_paragraphs = paragraphs >= 2
    turns: list[Turn] = []
    current: Turn | None = None
    for number, line, _ in entries:
        if not line:
            current = None
        elif current is None or not has_paragraphs:
            current = Turn(None, line, where=f"line {number}")
            turns.append(current)
        else:
            current.text += "\n" + line
    return turns
