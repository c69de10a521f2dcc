"""The one place that picks a summary engine from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.llm import OpenAILLM
from tasks.summaries.engines.extractive.engine import ExtractiveSummarizer
from tasks.summaries.engines.llm import LLMSummarizer
from tasks.summaries.models import Summarizer

if TYPE_CHECKING:
    from tasks.settings import Settings


def build_summarizer(settings: Settings) -> Summarizer:
    """The summariser the settings ask for: a chat model, or the offline extractive engine."""
    if settings.llm_engine == "openai":
        return LLMSummarizer(
            OpenAILLM.from_settings(settings),
            attempts=settings.llm_validation_attempts,
            temperature=settings.llm_temperature,
        )
    return ExtractiveSummarizer()
