"""WebVTT and SRT captions: cues, malformed cues reported by line, voice tags and labels."""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field

from tasks.transcripts.formats.labelled import Label, match_label
from tasks.transcripts.formats.turns import (
    CUE_TS,
    GROUP_CHARS,
    MAX_WARNINGS,
    Turn,
    parse_seconds,
    spoken,
)

CUE_TIMING = re.compile(rf"(?P<start>{CUE_TS})\s*-->\s*(?P<end>{CUE_TS})(?:\s.*)?")
_VTT_BLOCK = re.compile(r"(?:WEBVTT|NOTE|STYLE|REGION)(?:\s|$)")
_ARROW = re.compile(r"\s*(?:-{1,3}\s?>|=+>|[–—]+>?|-{2,3})\s*")
_TS_LIKE = re.compile(r"\d\w*(?:[:;.,]\w+)+")
SRT_START = re.compile(rf"\s*\d+[ \t]*\n[ \t]*{CUE_TS}\s*-->")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?(?:\s+(?P<name>[^>]*))?>|</v\s*>")
_CAPTION_TAG = re.compile(r"</?(?:[A-Za-z][^<>\n]*|\d[\d:.]*)>|\{\\[^}]*\}")


@dataclass
class _Cue:
    start: float | None
    end: float | None
    number: int
    lines: list[str] = field(default_factory=list)


def read_cues(text: str) -> tuple[list[_Cue], list[str]]:
    """WebVTT or SRT cues: skip headers, NOTE/STYLE/REGION blocks, cue ids and cue settings.

    A malformed cue keeps its own text, with the times that can still be read, and is reported
    with its line number: a cue with a broken timing line, a numbered cue with none, text before
    the first cue. Without this its text was dropped or glued to the cue before.
    """
    cues: list[_Cue] = []
    warnings: list[str] = []
    current: _Cue | None = None
    pending: list[tuple[int, str]] = []
    skipping = False

    def flush_pending() -> None:
        if len(pending) > 1 and pending[0][1].isdigit():
            number, cue_id = pending[0]
            warnings.append(f"line {number}: cue {cue_id} has no timing line; text kept")
            cues.append(_Cue(None, None, len(cues) + 1, [line for _, line in pending[1:]]))
            pending.clear()
            return
        # text after a blank line inside a cue (common in hand-made SRT) belongs to that cue
        orphans = [(number, line) for number, line in pending if not line.isdigit()]
        if orphans and cues:
            cues[-1].lines.extend(line for _, line in orphans)
        elif orphans:
            warnings.append(f"line {orphans[0][0]}: text before the first cue; dropped")
        pending.clear()

    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        times = _cue_times(line)
        if times is not None:
            start, end, problem = times
            if problem:
                warnings.append(f"line {number}: malformed cue timing {line!r}; {problem}")
            if current is not None and current.lines and current.lines[-1].isdigit():
                current.lines.pop()
            pending.clear()
            skipping = False
            current = _Cue(start, end, len(cues) + 1)
            cues.append(current)
        elif not line:
            if not skipping:
                flush_pending()
            current, skipping = None, False
        elif current is not None:
            current.lines.append(line)
        elif not skipping and not pending and _VTT_BLOCK.match(line):
            skipping = True
        elif not skipping:
            pending.append((number, line))
    if not skipping:
        flush_pending()
    if len(warnings) > MAX_WARNINGS:
        warnings[MAX_WARNINGS:] = [f"{len(warnings) - MAX_WARNINGS} more problems like these"]
    return cues, warnings


def _cue_times(line: str) -> tuple[float | None, float | None, str | None] | None:
    """Start, end and what is wrong (None if nothing) for a cue timing line; None for others."""
    if timing := CUE_TIMING.fullmatch(line):
        return parse_seconds(timing["start"]), parse_seconds(timing["end"]), None
    return _broken_timing(line)


def _broken_timing(line: str) -> tuple[float | None, float | None, str] | None:
    """Start, end (None where unreadable) and what is wrong, for a line meant as a cue timing
    that does not parse; None for any other line.

    A line is meant as a timing when an arrow ("-->", or a near miss such as "->" or "=>")
    has a timestamp-like token on one side ("-->") or on every side that has one (near misses).
    """
    arrow = _ARROW.search(line)
    if arrow is None:
        return None
    left, right = line[: arrow.start()].strip(), line[arrow.end() :].split()
    first = right[0] if right else ""
    left_ok, first_ok = bool(_TS_LIKE.fullmatch(left)), bool(_TS_LIKE.fullmatch(first))
    exact = arrow.group().strip() == "-->"
    if not (left_ok or first_ok):
        return None
    if not exact and not ((left_ok or not left) and (first_ok or not first)):
        return None
    start = parse_seconds(left) if left_ok else None
    end = parse_seconds(first) if first_ok else None
    unreadable = [name for name, value in (("start", start), ("end", end)) if value is None]
    if unreadable:
        return start, end, f"no {' or '.join(unreadable)} time; text kept"
    return start, end, f"read as {left} --> {first}"


def _voice_chunks(text: str) -> list[tuple[str | None, str]]:
    """Split cue text on `<v Speaker>` voice tags into (speaker, text) chunks."""
    chunks: list[tuple[str | None, str]] = []
    voice: str | None = None
    pos = 0
    for match in _VOICE.finditer(text):
        chunks.append((voice, text[pos : match.start()]))
        voice = None if match.group(0).startswith("</") else (match["name"] or "").strip() or None
        pos = match.end()
    chunks.append((voice, text[pos:]))
    return chunks


def caption_turns(cues: list[_Cue]) -> list[Turn]:
    """One turn per speaker within each cue, then consecutive same-speaker turns merged.

    The speaker comes from a voice tag or a "Name:" label; a cue without one continues the
    previous speaker. A label counts only if its name is used twice, or half the cues have one.
    """
    parsed: list[list[tuple[str | None, Label | None, str]]] = []
    label_counts: Counter[str] = Counter()
    for cue in cues:
        lines: list[tuple[str | None, Label | None, str]] = []
        for voice, chunk in _voice_chunks("\n".join(cue.lines)):
            for raw in chunk.split("\n"):
                line = html.unescape(_CAPTION_TAG.sub("", raw)).strip().lstrip(">").strip()
                if not line:
                    continue
                label = None if voice else match_label(line)
                if label:
                    label_counts[label.name] += 1
                lines.append((voice, label, line))
        parsed.append(lines)
    accept_all = 2 * label_counts.total() >= len(cues)

    turns: list[Turn] = []
    speaker: str | None = None
    for cue, lines in zip(cues, parsed, strict=True):
        cue_turns: list[Turn] = []
        for voice, label, line in lines:
            if label and (accept_all or label_counts[label.name] >= 2):
                speaker, line = label.name, label.text
            elif voice:
                speaker = voice
            if cue_turns and cue_turns[-1].speaker == speaker:
                cue_turns[-1].text += " " + line
            else:
                cue_turns.append(Turn(speaker, line, cue.start, cue.end, f"cue {cue.number}"))
        turns.extend(cue_turns)
    return _merge_turns(turns)


def _merge_turns(turns: list[Turn]) -> list[Turn]:
    """Merge consecutive turns of one speaker while the text stays within `GROUP_CHARS`."""
    merged: list[Turn] = []
    for turn, text in spoken(turns):
        last = merged[-1] if merged else None
        if last and last.speaker == turn.speaker and len(last.text) + 1 + len(text) <= GROUP_CHARS:
            last.text += " " + text
            last.end = turn.end if turn.end is not None else last.end
        else:
            merged.append(Turn(turn.speaker, text, turn.start, turn.end, turn.where))
    return merged
