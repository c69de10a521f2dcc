"""Replies for the fake OpenAI server that look like a faithful meeting-notes model."""

from __future__ import annotations

import json
from typing import Any

from tests.support.openai_server import last_user_text


def meeting_notes_responder(request: dict[str, Any]) -> str:
    """Valid `MeetingNotes` JSON that quotes the first transcript line of the prompt."""
    text = last_user_text(request)
    body = text.split("<transcript>")[-1].split("<notes>")[-1].strip()
    first = body.splitlines()[0][:120] if body else "the meeting"
    speaker = first.split(":")[0][:40] if ":" in first else "Alice"
    return json.dumps(
        {
            "summary": f"The group discussed the following: {first}",
            "key_points": [first],
            "action_items": [{"description": "Send the notes", "owner": speaker, "due": None}],
            "decisions": [],
            "participants": [speaker],
        }
    )
