"""Transcript parsing: every supported format becomes one list of `Utterance`s."""

from __future__ import annotations

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
    name: str = Field(description="File stem, used for output names and task-run names.")
    format: str = Field(description="Detected format: text, speaker, markdown, vtt, srt, ...")
    content_hash: str = Field(description="sha256 of the raw bytes.")
    utterances: list[Utterance]
