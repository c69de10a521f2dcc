"""Meeting summaries: map-reduce over a transcript's chunks into structured notes.

models    `MeetingNotes` (what an engine fills), `TranscriptSummary` (what is written), the
          `Summarizer` protocol every engine implements
prompts   the prompts that fill the notes, versioned (`PROMPT_VERSION` is in every cache key)
engines/  `build_summarizer` picks one: llm (a chat model) or extractive (offline, no model)
chunks    map: chunk a transcript and summarise its chunks, resumable per chunk
reduce    combine consecutive notes in passes that fit the token budget
cache     result-store keys of chunk and combined notes
outputs   output names that never collide, the done-already check, Markdown, atomic writes
grouped   small transcripts many to a task, each still ending (and failing) on its own
speakers  participants and owners kept to the speakers a transcript has
key_points  key points that add: none repeats the summary or another key point
final     the checks every engine's final notes pass (speakers, then key points)
"""

from tasks.summaries.engines.factory import build_summarizer
from tasks.summaries.models import (
    ActionItem,
    MeetingNotes,
    NotesResult,
    Summarizer,
    TranscriptSummary,
)
from tasks.summaries.prompts import PROMPT_VERSION

__all__ = [
    "PROMPT_VERSION",
    "ActionItem",
    "MeetingNotes",
    "NotesResult",
    "Summarizer",
    "TranscriptSummary",
    "build_summarizer",
]
