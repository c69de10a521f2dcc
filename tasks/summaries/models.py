"""What a summary is: the notes an engine fills, what they cost, and the `Summarizer` protocol."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field, field_validator

from tasks.chunking import Chunk
from tasks.llm import Usage


class ActionItem(BaseModel):
    """Something a person agreed to do."""

    description: str = Field(min_length=3, description="What has to be done, as an instruction.")
    owner: str | None = Field(description="Who does it, as named in the meeting; null if nobody.")
    due: str | None = Field(description="When it is due, as said in the meeting; null if unsaid.")


class MeetingNotes(BaseModel):
    """The structured content of a meeting or of a part of one."""

    summary: str = Field(min_length=1, description="A faithful prose summary.")
    key_points: list[str] = Field(description="The most important points, one sentence each.")
    action_items: list[ActionItem] = Field(description="Tasks people committed to.")
    decisions: list[str] = Field(description="Decisions the meeting reached.")
    participants: list[str] = Field(description="Names of the people who spoke.")

    @field_validator("summary")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("summary is blank")
        return value.strip()


class NotesResult(BaseModel):
    """Notes with what producing them cost."""

    notes: MeetingNotes
    usage: Usage = Field(default_factory=Usage)
    attempts: int = 1


class TranscriptSummary(MeetingNotes):
    """The final output for one transcript (written as JSON and Markdown)."""

    source: str
    engine: str
    model: str
    chunk_count: int
    reduce_passes: int = 0
    content_hash: str
    prompt_version: str
    usage: Usage
    generated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@runtime_checkable
class Summarizer(Protocol):
    """Turns chunks into notes and notes into fewer notes."""

    engine: str
    model: str
    version: str

    def summarize_chunk(self, chunk: Chunk, *, title: str, chunk_count: int) -> NotesResult: ...

    def combine(self, parts: list[MeetingNotes], *, title: str, final: bool) -> NotesResult: ...
