"""`LLMSummarizer`: notes from a chat model, as validated structured output."""

from __future__ import annotations

from tasks.chunking import Chunk
from tasks.llm import LLM, Usage, dumps_for_prompt, generate_structured
from tasks.summaries.models import MeetingNotes, NotesResult
from tasks.summaries.prompts import CHUNK_PROMPT, COMBINE_PROMPT, PROMPT_VERSION, SYSTEM_PROMPT


class LLMSummarizer:
    """Map-reduce summaries from a chat model with validated structured output."""

    def __init__(self, llm: LLM, *, attempts: int = 3, temperature: float = 0.2) -> None:
        self.llm = llm
        self.engine = llm.engine
        self.model = llm.model
        self.version = PROMPT_VERSION
        self.attempts = attempts
        self.temperature = temperature

    def summarize_chunk(self, chunk: Chunk, *, title: str, chunk_count: int) -> NotesResult:
        prompt = CHUNK_PROMPT.format(
            title=title, part=chunk.index + 1, parts=chunk_count, text=chunk.text
        )
        return self._ask(prompt)

    def combine(self, parts: list[MeetingNotes], *, title: str, final: bool) -> NotesResult:
        if len(parts) == 1:
            return NotesResult(notes=parts[0], usage=Usage(), attempts=0)
        prompt = COMBINE_PROMPT.format(
            title=title,
            notes=dumps_for_prompt([p.model_dump() for p in parts]),
            scope="notes for the whole meeting" if final else "notes for this stretch",
            summary_length="one to three paragraphs" if final else "5-8 sentences",
            unit="meeting" if final else "stretch",
        )
        return self._ask(prompt)

    def _ask(self, prompt: str) -> NotesResult:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        notes, usage, attempts = generate_structured(
            self.llm,
            messages,
            MeetingNotes,
            attempts=self.attempts,
            temperature=self.temperature,
        )
        return NotesResult(notes=notes, usage=usage, attempts=attempts)
