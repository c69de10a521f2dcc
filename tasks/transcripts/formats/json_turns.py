"""JSON transcripts: Whisper output, a list of turns, or an object holding such a list."""

from __future__ import annotations

import re

from tasks.errors import InputError
from tasks.textfiles import parse_json
from tasks.transcripts.formats.turns import Turn, parse_seconds

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

_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t]*\r?\n")


def json_turns(text: str) -> tuple[str, list[Turn]]:
    """Turns of Whisper output, a list of turns, or an object holding such a list."""
    data = parse_json(text)
    found = _json_shape(data, "")
    if found is None:
        raise InputError(
            f"JSON of an unrecognised shape: found {_describe(data)}; expected Whisper output"
            " (an object with 'segments' or 'text'), a list of turns, or an object holding a"
            f" list of turns under one of: {', '.join(TURN_LIST_KEYS)}"
        )
    return found


def whisper_segments(data: dict[str, object]) -> list[object] | None:
    """The `segments` of Whisper output (a non-empty list, each with a start and a text), if
    `data` is one; the document loader asks the same question to tell a transcript from records."""
    segments = data.get("segments")
    if (
        isinstance(segments, list)
        and segments
        and all(isinstance(s, dict) and "text" in s and "start" in s for s in segments)
    ):
        return segments
    return None


def _json_shape(data: object, path: str, depth: int = 0) -> tuple[str, list[Turn]] | None:
    if isinstance(data, list):
        return "json", _json_list(data, path)
    if not isinstance(data, dict):
        return None
    segments = whisper_segments(data)
    if segments is not None:
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
            return fmt, [Turn(None, p, where=where, split=True) for p in paragraphs]
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


def _json_list(items: list[object], path: str) -> list[Turn]:
    turns: list[Turn] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if path else f"item {i}"
        if isinstance(item, str):
            turns.append(Turn(None, item, where=where))
            continue
        if not isinstance(item, dict):
            raise InputError(
                f"JSON of an unrecognised shape: {where} is {_describe(item)},"
                " expected an object with a speaker and a text"
            )
        text = _json_text(item, where)
        start = parse_seconds(item.get("start", item.get("start_time")))
        end = parse_seconds(item.get("end", item.get("end_time")))
        turns.append(Turn(_json_speaker(item), text, start, end, where))
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
