"""Reduce: merge consecutive notes into one, in passes that fit the token budget."""

from __future__ import annotations

from prefect import task

from tasks.llm import dumps_for_prompt
from tasks.summaries.cache import combine_cache_key
from tasks.summaries.models import MeetingNotes, NotesResult, Summarizer
from tasks.tokens import count_tokens


def notes_tokens(notes: MeetingNotes) -> int:
    """Prompt tokens the notes take when combined."""
    return count_tokens(dumps_for_prompt(notes.model_dump()))


def plan_reduce_groups(parts: list[MeetingNotes], budget_tokens: int) -> list[list[int]]:
    """Group consecutive parts so each group's notes fit `budget_tokens` (at least two a group).

    One group means the final combine can run at once; several mean another reduce pass first.
    """
    groups: list[list[int]] = [[]]
    used = 0
    for i, part in enumerate(parts):
        tokens = notes_tokens(part)
        if groups[-1] and used + tokens > budget_tokens and len(groups[-1]) >= 2:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += tokens
    if len(groups) > 1 and len(groups[-1]) == 1:
        groups[-2].extend(groups.pop())
    return groups


@task(
    task_run_name="combine {title} ({pass_name})",
    cache_key_fn=combine_cache_key,
    persist_result=True,
)
def combine_notes(
    parts: list[MeetingNotes], summarizer: Summarizer, title: str, final: bool, pass_name: str
) -> NotesResult:
    """Merge consecutive notes into one (cached on the parts and the engine)."""
    return summarizer.combine(parts, title=title, final=final)
