"""Transcript parsing: every supported format becomes one list of `Utterance`s."""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.errors import InputError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from tasks.quality import QualityReport


class Utterance(BaseModel):
    """One speaker turn (or one caption / segment) in transcript order."""

    index: int = Field(ge=0, description="Position in the transcript, 0-based, contiguous.")
    speaker: str | None = None
    text: str
    start: float | None = Field(None, description="Seconds from the start, when known.")
    end: float | None = None


class Transcript(BaseModel):
    """A parsed transcript: where it came from, its content hash and its utterances."""

    source: str = Field(description="Path as given (or relative to the input folder).")
    name: str = Field(description="File stem: the meeting's title in prompts and task-run names.")
    format: str = Field(description="Detected format: text, speaker, markdown, vtt, srt, ...")
    content_hash: str = Field(description="sha256 of the raw bytes.")
    utterances: list[Utterance]
    warnings: list[str] = Field(
        default_factory=list, description="What was read with care (malformed cues), by line."
    )


SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".markdown", ".vtt", ".srt", ".json"}
)
FORMATS: frozenset[str] = frozenset(
    {"text", "speaker", "markdown", "vtt", "srt", "json", "whisper"}
)

MAX_LINE_CHARS = 100_000
"""A line longer than this must be splittable on sentences or whitespace, or the file fails."""
LONG_UTTERANCE_CHARS = 10_000
"""Utterances longer than this are split into sentence groups of about `GROUP_CHARS`."""
GROUP_CHARS = 1_000
"""Target size of a sentence group, and the limit for merging consecutive captions."""
MAX_WARNINGS = 20
"""Problems listed for one file; more are counted in one last line."""

# Keys under which a JSON object holds its list of turns, in the order they are looked for;
# the fields of a turn that hold its speaker and its text (tasks/documents.py reuses them).
TURN_LIST_KEYS = (
    "turns",
    "utterances",
    "transcript",
    "meeting_transcripts",
    "messages",
    "segments",
    "dialogue",
)
SPEAKER_KEYS = ("speaker", "name", "role", "speaker_name")
TEXT_KEYS = ("text", "content", "utterance")

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

_CUE_TS = r"(?:\d+:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?"
_TIMING = re.compile(rf"(?P<start>{_CUE_TS})\s*-->\s*(?P<end>{_CUE_TS})(?:\s.*)?")
_VTT_BLOCK = re.compile(r"(?:WEBVTT|NOTE|STYLE|REGION)(?:\s|$)")
_ARROW = re.compile(r"\s*(?:-{1,3}\s?>|=+>|[–—]+>?|-{2,3})\s*")
_TS_LIKE = re.compile(r"\d\w*(?:[:;.,]\w+)+")
_SRT_START = re.compile(rf"\s*\d+[ \t]*\n[ \t]*{_CUE_TS}\s*-->")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?(?:\s+(?P<name>[^>]*))?>|</v\s*>")
_CAPTION_TAG = re.compile(r"</?(?:[A-Za-z][^<>\n]*|\d[\d:.]*)>|\{\\[^}]*\}")

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[\"'”’」』)\]]*\s*")
_WORD = re.compile(r"\S+\s*")
_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t]*\r?\n")


@dataclass
class _Turn:
    """An utterance before whitespace clean-up, splitting and indexing."""

    speaker: str | None
    text: str
    start: float | None = None
    end: float | None = None
    where: str = ""
    split: bool = False


class _Label(NamedTuple):
    name: str
    text: str
    start: float | None


class FoundTranscript(NamedTuple):
    """A transcript file and its path under the input it was found in (outputs mirror it)."""

    path: Path
    relative: Path
    """Path under the folder given as input; just the file name for a file given directly."""


def discover_transcripts(
    paths: list[Path], *, skip: Path | None = None
) -> tuple[list[FoundTranscript], list[tuple[str, str]]]:
    """Expand folders into supported transcript files; report unusable paths instead of raising.

    The folder `skip` (the output folder, when it lies inside an input folder) is not read:
    summaries are not transcripts.
    """
    skip = skip.resolve() if skip is not None else None
    files: list[FoundTranscript] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(file: Path, root: Path) -> None:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            files.append(FoundTranscript(file, file.relative_to(root)))

    for path in paths:
        if path.is_dir():
            for file in _walk(path, skip):
                add(file, path)
        elif path.is_file():
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                add(path, path.parent)
            else:
                problems.append((str(path), _unsupported_suffix_message(path)))
        elif path.exists():
            problems.append((str(path), "not a regular file or folder"))
        else:
            problems.append((str(path), "no such file or folder"))
    return files, problems


def check_output_folder(paths: list[Path], out: Path) -> None:
    """Refuse an output folder that is an input or holds one: the next run would read its
    summaries as transcripts, and a Markdown summary could replace a Markdown transcript."""
    target = out.resolve()
    for path in paths:
        where = path.resolve()
        if where == target or target in where.parents:
            raise UsageError(
                f"the output folder {out} {'is' if where == target else 'holds'} the input {path};"
                " write summaries to a folder of their own (it may lie inside the input folder)"
            )


def _walk(root: Path, skip: Path | None = None) -> list[Path]:
    """Supported, non-hidden files under `root`, in sorted order, outside the folder `skip`."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            name
            for name in dirnames
            if not name.startswith(".") and (skip is None or Path(folder, name).resolve() != skip)
        ]
        for name in filenames:
            file = Path(folder, name)
            if (
                not name.startswith(".")
                and file.suffix.lower() in SUPPORTED_SUFFIXES
                and file.is_file()
            ):
                found.append(file)
    return sorted(found, key=lambda file: file.relative_to(root).parts)


def _unsupported_suffix_message(path: Path) -> str:
    expected = ", ".join(sorted(SUPPORTED_SUFFIXES))
    if not path.suffix:
        return f"file has no extension; expected one of {expected}"
    return f"unsupported file extension {path.suffix!r}; expected one of {expected}"


def parse_transcript(
    path: Path, *, source: str | None = None, max_bytes: int = 20_000_000
) -> Transcript:
    """Read, check and parse one transcript file; raise `InputError` saying why it is unusable."""
    source = source if source is not None else str(path)
    try:
        data = _read_bytes(path, max_bytes)
        text = _decode(data)
        fmt, utterances, warnings = _parse(text, _initial_format(path.suffix.lower(), text))
    except InputError as exc:
        exc.source = source
        raise
    return Transcript(
        source=source,
        name=path.stem,
        format=fmt,
        content_hash=hashlib.sha256(data).hexdigest(),
        utterances=utterances,
        warnings=warnings,
    )


def parse_transcript_text(text: str, fmt: str) -> list[Utterance]:
    """Parse decoded text as `fmt` (one of `FORMATS`); "text" and "markdown" detect speaker
    labels, "speaker" forces them, "json" and "whisper" both accept every JSON shape."""
    return _parse(text.replace("\r\n", "\n").replace("\r", "\n"), fmt)[1]


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError("not a regular file: it is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise InputError("not a regular file (a device, socket or pipe)")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(_unsupported_suffix_message(path))
    too_large = InputError(
        f"file is too large: {info.st_size:,} bytes, the limit is {max_bytes:,}",
        hint="split the transcript or raise the size limit",
    )
    if info.st_size > max_bytes:
        raise too_large
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise too_large
    return data


def _decode(data: bytes) -> str:
    """Decode UTF-8 (with or without BOM) and normalise line endings."""
    if not data:
        raise InputError("file is empty (0 bytes)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("file is UTF-16 or UTF-32 encoded, not UTF-8", hint="re-save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"binary content: NUL byte at offset {nul}; this is not a text transcript")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        raise InputError(
            f"invalid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} cannot be decoded",
            hint="re-save the file as UTF-8",
        ) from None
    if not text.strip():
        raise InputError("file is empty (only whitespace)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _initial_format(suffix: str, text: str) -> str:
    """Format from the extension, corrected by content for captions and `.txt`/`.md` files."""
    head = text.lstrip()
    if suffix == ".json":
        return "json"
    if head.startswith("WEBVTT"):
        return "vtt"
    if suffix in (".vtt", ".srt"):
        return suffix[1:]
    first_line = head.split("\n", 1)[0].strip()
    if _SRT_START.match(head[:200]):
        return "srt"
    if timing := _TIMING.fullmatch(first_line):
        return "srt" if "," in timing["start"] else "vtt"
    if head[:1] in ("{", "["):
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            pass
        else:
            return "json"
    return "markdown" if suffix in (".md", ".markdown") else "text"


def _parse(text: str, fmt: str) -> tuple[str, list[Utterance], list[str]]:
    """Parse `text` as `fmt`; return the refined format, the indexed utterances and warnings."""
    warnings: list[str] = []
    if fmt in ("json", "whisper"):
        fmt, turns = _json_turns(text)
    elif fmt in ("vtt", "srt"):
        _check_long_lines(text)
        cues, warnings = _read_cues(text)
        turns = _caption_turns(cues)
    elif fmt in ("text", "speaker", "markdown"):
        _check_long_lines(text)
        has_speakers, turns = _line_turns(
            text, markdown=fmt == "markdown", force_speakers=fmt == "speaker"
        )
        if fmt == "text" and has_speakers:
            fmt = "speaker"
    else:
        raise ValueError(f"unknown transcript format {fmt!r}; expected one of {sorted(FORMATS)}")
    utterances = _to_utterances(turns)
    if not utterances:
        problems = f" ({len(warnings)} problems, first {warnings[0]})" if warnings else ""
        raise InputError(f"no utterances found in this {fmt} transcript{problems}")
    return fmt, utterances, warnings


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _to_utterances(turns: list[_Turn]) -> list[Utterance]:
    """Drop empty turns, split over-long ones into sentence groups, number them from 0."""
    utterances: list[Utterance] = []
    for turn in turns:
        text = _collapse(turn.text)
        if not text:
            continue
        speaker = _collapse(turn.speaker) if turn.speaker else None
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


def _check_long_lines(text: str) -> None:
    """Fail on a line over `MAX_LINE_CHARS` that has no sentence or whitespace break."""
    if len(text) <= MAX_LINE_CHARS:
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            longest = max((len(p.rstrip()) for p in _pieces(_collapse(line))), default=0)
            if longest > MAX_LINE_CHARS:
                raise _enormous(f"line {number}", longest)


def _seconds(value: object) -> float | None:
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
            if not re.fullmatch(_CUE_TS, value):
                return None
            seconds = 0.0
            for part in value.replace(",", ".").split(":"):
                seconds = seconds * 60 + float(part)
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


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


def _match_label(line: str) -> _Label | None:
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
    return _Label(name, text, _seconds(ts) if ts else None)


def _line_turns(text: str, *, markdown: bool, force_speakers: bool) -> tuple[bool, list[_Turn]]:
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
        entries.append(_Entry(number, line, _match_label(line) if line else None))
    if force_speakers or _looks_labelled(entries):
        return True, _speaker_turns(entries)
    return False, _plain_turns(entries)


class _Entry(NamedTuple):
    number: int
    line: str | None
    """Stripped text; "" for a blank line, None for a Markdown heading or rule."""
    label: _Label | None


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


def _speaker_turns(entries: list[_Entry]) -> list[_Turn]:
    """A label starts a turn; unlabelled lines continue it; Markdown headings end it."""
    turns: list[_Turn] = []
    current: _Turn | None = None
    for number, line, label in entries:
        if label:
            current = _Turn(label.name, label.text, label.start, where=f"line {number}")
            turns.append(current)
        elif line is None:
            current = None
        elif not line:
            continue
        elif current is None:
            current = _Turn(None, line, where=f"line {number}")
            turns.append(current)
        else:
            current.text += "\n" + line
    return turns


def _plain_turns(entries: list[_Entry]) -> list[_Turn]:
    """Paragraphs become turns when blank lines separate them; otherwise every line does."""
    paragraphs = sum(
        1 for i, entry in enumerate(entries) if entry.line and (i == 0 or not entries[i - 1].line)
    )
    has_paragraphs = paragraphs >= 2
    turns: list[_Turn] = []
    current: _Turn | None = None
    for number, line, _ in entries:
        if not line:
            current = None
        elif current is None or not has_paragraphs:
            current = _Turn(None, line, where=f"line {number}")
            turns.append(current)
        else:
            current.text += "\n" + line
    return turns


@dataclass
class _Cue:
    start: float | None
    end: float | None
    number: int
    lines: list[str] = field(default_factory=list)


def _read_cues(text: str) -> tuple[list[_Cue], list[str]]:
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
    if timing := _TIMING.fullmatch(line):
        return _seconds(timing["start"]), _seconds(timing["end"]), None
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
    start = _seconds(left) if left_ok else None
    end = _seconds(first) if first_ok else None
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


def _caption_turns(cues: list[_Cue]) -> list[_Turn]:
    """One turn per speaker within each cue, then consecutive same-speaker turns merged.

    The speaker comes from a voice tag or a "Name:" label; a cue without one continues the
    previous speaker. A label counts only if its name is used twice, or half the cues have one.
    """
    parsed: list[list[tuple[str | None, _Label | None, str]]] = []
    label_counts: Counter[str] = Counter()
    for cue in cues:
        lines: list[tuple[str | None, _Label | None, str]] = []
        for voice, chunk in _voice_chunks("\n".join(cue.lines)):
            for raw in chunk.split("\n"):
                line = html.unescape(_CAPTION_TAG.sub("", raw)).strip().lstrip(">").strip()
                if not line:
                    continue
                label = None if voice else _match_label(line)
                if label:
                    label_counts[label.name] += 1
                lines.append((voice, label, line))
        parsed.append(lines)
    accept_all = 2 * label_counts.total() >= len(cues)

    turns: list[_Turn] = []
    speaker: str | None = None
    for cue, lines in zip(cues, parsed, strict=True):
        cue_turns: list[_Turn] = []
        for voice, label, line in lines:
            if label and (accept_all or label_counts[label.name] >= 2):
                speaker, line = label.name, label.text
            elif voice:
                speaker = voice
            if cue_turns and cue_turns[-1].speaker == speaker:
                cue_turns[-1].text += " " + line
            else:
                cue_turns.append(_Turn(speaker, line, cue.start, cue.end, f"cue {cue.number}"))
        turns.extend(cue_turns)
    return _merge_turns(turns)


def _merge_turns(turns: list[_Turn]) -> list[_Turn]:
    """Merge consecutive turns of one speaker while the text stays within `GROUP_CHARS`."""
    merged: list[_Turn] = []
    for turn in turns:
        text = _collapse(turn.text)
        if not text:
            continue
        last = merged[-1] if merged else None
        if last and last.speaker == turn.speaker and len(last.text) + 1 + len(text) <= GROUP_CHARS:
            last.text += " " + text
            last.end = turn.end if turn.end is not None else last.end
        else:
            merged.append(_Turn(turn.speaker, text, turn.start, turn.end, turn.where))
    return merged


def _json_turns(text: str) -> tuple[str, list[_Turn]]:
    """Turns of Whisper output, a list of turns, or an object holding such a list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    found = _json_shape(data, "")
    if found is None:
        raise InputError(
            f"JSON of an unrecognised shape: found {_describe(data)}; expected Whisper output"
            " (an object with 'segments' or 'text'), a list of turns, or an object holding a"
            f" list of turns under one of: {', '.join(TURN_LIST_KEYS)}"
        )
    return found


def _json_shape(data: object, path: str, depth: int = 0) -> tuple[str, list[_Turn]] | None:
    if isinstance(data, list):
        return "json", _json_list(data, path)
    if not isinstance(data, dict):
        return None
    segments = data.get("segments")
    if (
        isinstance(segments, list)
        and segments
        and all(isinstance(s, dict) and "text" in s and "start" in s for s in segments)
    ):
        return "whisper", _json_list(segments, f"{path}segments")
    empty = False
    for key in TURN_LIST_KEYS:
        value = data.get(key)
        if isinstance(value, list):
            if value:
                return "json", _json_list(value, f"{path}{key}")
            empty = True
        elif isinstance(value, dict) and depth < 3:
            found = _json_shape(value, f"{path}{key}.", depth + 1)
            if found is not None:
                return found
    for key, fmt in (("text", "whisper"), ("transcript", "json")):
        value = data.get(key)
        if isinstance(value, str):
            where = f"{path}{key}"
            paragraphs = _PARAGRAPH_BREAK.split(value)
            return fmt, [_Turn(None, p, where=where, split=True) for p in paragraphs]
    return ("json", []) if empty else None


def _describe(value: object) -> str:
    if isinstance(value, dict):
        keys = ", ".join(repr(str(key)) for key in list(value)[:8])
        return f"an object with keys {keys}" if keys else "an empty object"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "null"


def _json_list(items: list[object], path: str) -> list[_Turn]:
    turns: list[_Turn] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if path else f"item {i}"
        if isinstance(item, str):
            turns.append(_Turn(None, item, where=where))
            continue
        if not isinstance(item, dict):
            raise InputError(
                f"JSON of an unrecognised shape: {where} is {_describe(item)},"
                " expected an object with a speaker and a text"
            )
        text = _json_text(item, where)
        start = _seconds(item.get("start", item.get("start_time")))
        end = _seconds(item.get("end", item.get("end_time")))
        turns.append(_Turn(_json_speaker(item), text, start, end, where))
    return turns


def _json_text(item: dict[str, object], where: str) -> str:
    key = next((key for key in TEXT_KEYS if key in item), None)
    if key is None:
        raise InputError(
            f"JSON of an unrecognised shape: {where} has no text"
            f" (expected one of the fields {', '.join(TEXT_KEYS)}; found {_describe(item)})"
        )
    value = item[key]
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        parts = [
            p if isinstance(p, str) else p.get("text") for p in value if isinstance(p, str | dict)
        ]
        return " ".join(part for part in parts if isinstance(part, str))
    raise InputError(
        f"JSON of an unrecognised shape: {where}.{key} is {_describe(value)}, not text"
    )


def _json_speaker(item: dict[str, object]) -> str | None:
    for key in SPEAKER_KEYS:
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str | int) and str(value).strip():
            return str(value).strip()
    return None


def utterances_frame(transcript: Transcript) -> pd.DataFrame:
    """The utterance table the quality suite checks."""
    import pandas as pd

    return pd.DataFrame(
        {
            "index": [u.index for u in transcript.utterances],
            "speaker": [u.speaker for u in transcript.utterances],
            "text": [u.text for u in transcript.utterances],
        }
    )


@task(task_run_name="parse {source}", cache_policy=NO_CACHE)
def load_transcript(path: Path, source: str) -> tuple[Transcript, QualityReport]:
    """Parse one transcript and gate its utterance table on quality."""
    from tasks.quality import utterance_expectations, validate_table

    transcript = parse_transcript(path, source=source)
    if transcript.warnings:
        get_run_logger().warning("%s: %s", source, "; ".join(transcript.warnings))
    report = validate_table(utterances_frame(transcript), "utterances", utterance_expectations())
    return transcript, report.raise_for_errors()
