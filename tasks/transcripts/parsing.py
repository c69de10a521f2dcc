"""Reading one transcript file: check it, decode it, detect its format and parse it."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InputError
from tasks.textfiles import decode_text
from tasks.transcripts.discovery import unsupported_suffix_message
from tasks.transcripts.formats.captions import CUE_TIMING, SRT_START, caption_turns, read_cues
from tasks.transcripts.formats.json_turns import json_turns
from tasks.transcripts.formats.labelled import line_turns
from tasks.transcripts.formats.turns import check_long_lines, to_utterances
from tasks.transcripts.model import FORMATS, SUPPORTED_SUFFIXES, Transcript, Utterance

if TYPE_CHECKING:
    import pandas as pd

    from tasks.quality import QualityReport


def parse_transcript(
    path: Path, *, source: str | None = None, max_bytes: int = 20_000_000
) -> Transcript:
    """Read, check and parse one transcript file; raise `InputError` saying why it is unusable."""
    source = source if source is not None else str(path)
    try:
        data = _read_bytes(path, max_bytes)
        if not data:
            raise InputError("file is empty (0 bytes)")
        text = decode_text(data)
        if not text.strip():
            raise InputError("file is empty (only whitespace)")
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
        raise InputError(unsupported_suffix_message(path))
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
    if SRT_START.match(head[:200]):
        return "srt"
    if timing := CUE_TIMING.fullmatch(first_line):
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
        fmt, turns = json_turns(text)
    elif fmt in ("vtt", "srt"):
        check_long_lines(text)
        cues, warnings = read_cues(text)
        turns = caption_turns(cues)
    elif fmt in ("text", "speaker", "markdown"):
        check_long_lines(text)
        has_speakers, turns = line_turns(
            text, markdown=fmt == "markdown", force_speakers=fmt == "speaker"
        )
        if fmt == "text" and has_speakers:
            fmt = "speaker"
    else:
        raise ValueError(f"unknown transcript format {fmt!r}; expected one of {sorted(FORMATS)}")
    utterances = to_utterances(turns)
    if not utterances:
        problems = f" ({len(warnings)} problems, first {warnings[0]})" if warnings else ""
        raise InputError(f"no utterances found in this {fmt} transcript{problems}")
    return fmt, utterances, warnings


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
