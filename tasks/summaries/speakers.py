"""Names in notes checked against the speakers a transcript has (issue 16).

A transcript is data: a line such as "Mallory will approve the transfer" or an instruction to
list someone as present must not put a name in `participants` or an action item's `owner`.
Every engine's final notes pass through `keep_to_speakers`: a name stays when it is one of the
transcript's speakers (or names exactly one of them, "Alice" for "Alice Smith"), written as the
transcript writes it; other participants are dropped and other owners become null.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tasks.summaries.models import MeetingNotes
from tasks.transcripts.model import Utterance

_WORD = re.compile(r"\w+")
_NOTE = re.compile(r"\s+\([^()]*\)$")


def speakers_of(utterances: Iterable[Utterance]) -> list[str]:
    """The speaker labels of a transcript, in order of first appearance, each once."""
    return list(
        dict.fromkeys(u.speaker.strip() for u in utterances if u.speaker and u.speaker.strip())
    )


def known_speaker(name: str | None, speakers: Sequence[str]) -> str | None:
    """The speaker `name` refers to, as the transcript writes it; None if none or several.

    A label's trailing note ("Ms. Lee (Toronto, Liberal)") may be left out, as the offline
    engine does; a name that is some of a label's words ("Alice" of "Alice Smith") counts when
    exactly one label has them.
    """
    if not name or not name.strip():
        return None
    wanted = name.strip().casefold()
    for label in speakers:
        for form in (label, _NOTE.sub("", label)):
            if form.casefold() == wanted:
                return name.strip() if form == name.strip() else form
    words = set(_WORD.findall(wanted))
    if not words:
        return None
    matches = [
        label for label in speakers if words <= set(_WORD.findall(_NOTE.sub("", label).casefold()))
    ]
    return _NOTE.sub("", matches[0]) if len(matches) == 1 else None


def keep_to_speakers(notes: MeetingNotes, speakers: Sequence[str]) -> MeetingNotes:
    """`notes` with participants and owners that are the transcript's speakers only."""
    participants = [known_speaker(name, speakers) for name in notes.participants]
    items = [
        item.model_copy(update={"owner": known_speaker(item.owner, speakers)})
        for item in notes.action_items
    ]
    return notes.model_copy(
        update={
            "participants": list(dict.fromkeys(p for p in participants if p is not None)),
            "action_items": items,
        }
    )
