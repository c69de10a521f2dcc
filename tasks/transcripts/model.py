"""What a parsed transcript is: its utterances, its source and the formats it may come in."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field


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


class FoundTranscript(NamedTuple):
    """A transcript file and its path under the input it was found in (outputs mirror it)."""

    path: Path
    relative: Path
    """Path under the folder given as input; just the file name for a file given directly."""


SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".markdown", ".vtt", ".srt", ".json"}
)
FORMATS: frozenset[str] = frozenset(
    {"text", "speaker", "markdown", "vtt", "srt", "json", "whisper"}
)
