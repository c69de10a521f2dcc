"""Result-store keys for chunk and combined notes, and reading stored notes back.

A key covers the text, its place, the engine, the model and the prompt version, so a changed
prompt or model never reuses notes made by another.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from tasks.chunking import Chunk
from tasks.summaries.models import MeetingNotes, NotesResult, Summarizer

if TYPE_CHECKING:
    from prefect.context import TaskRunContext
    from prefect.results import ResultStore


def hash_text(*pieces: str) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def engine_identity(summarizer: Summarizer) -> str:
    return f"{summarizer.engine}|{summarizer.model}|{summarizer.version}"


def chunk_cache_key(summarizer: Summarizer, title: str, chunk_count: int, chunk: Chunk) -> str:
    """The result-store key of one chunk's notes: its text, place, engine, model and prompt."""
    return "summarize-chunk-" + hash_text(
        engine_identity(summarizer), title, str(chunk_count), str(chunk.index), chunk.text
    )


def combine_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    parts: list[MeetingNotes] = parameters["parts"]
    return "combine-notes-" + hash_text(
        engine_identity(parameters["summarizer"]),
        parameters["title"],
        str(parameters["final"]),
        *(p.model_dump_json() for p in parts),
    )


def read_notes(store: ResultStore, key: str) -> NotesResult | None:
    """A chunk's stored notes, or None when absent or unreadable (then it is recomputed)."""
    try:
        if not store.exists(key):
            return None
        value = store.read(key).result
    except Exception:
        return None
    return value if isinstance(value, NotesResult) else None
