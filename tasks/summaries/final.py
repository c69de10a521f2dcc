"""The checks every engine's final notes pass before they become a `TranscriptSummary`."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.summaries.key_points import distinct_key_points
from tasks.summaries.models import MeetingNotes
from tasks.summaries.speakers import keep_to_speakers


def final_notes(notes: MeetingNotes, speakers: Sequence[str]) -> MeetingNotes:
    """Names kept to the transcript's speakers, then key points that add to the summary."""
    return distinct_key_points(keep_to_speakers(notes, speakers))
