"""Flow `answer_question`: answer a question from an ingested collection, with citations.

The steps are `tasks.answers` (shared with `gristmill api` and `gristmill mcp`); this flow runs
retrieve and answer as Prefect tasks, tags the run and publishes the answer as an artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from pipelines.run_context import current_run
from tasks.answers import (
    MAX_QUESTION_CHARS,
    Answer,
    AskSteps,
    Citation,
    Refusal,
    answer_from,
    ask,
    check_question,
    extractive_answer,
    llm_answer,
    llm_for,
    mmr,
    retrieve,
    validate_citations,
)
from tasks.embeddings import build_embedder
from tasks.errors import GristmillError, RunFailed
from tasks.reporting import publish_report, tag_flow_run
from tasks.retrieval import open_store
from tasks.vectorstore import ChunkStore, Hit

# The plain steps' names, for callers that knew them here.
__all__ = [
    "MAX_QUESTION_CHARS",
    "Answer",
    "Citation",
    "Refusal",
    "answer_question",
    "check_question",
    "extractive_answer",
    "llm_answer",
    "mmr",
    "retrieve",
    "validate_citations",
]

REPORT_ARTIFACT_KEY = "answer-question-report"


@task(task_run_name="retrieve", cache_policy=NO_CACHE)
def retrieve_task(
    question: str, store: ChunkStore, embedder: Any, k: int, where: dict[str, Any] | None
) -> list[Hit]:
    """Retrieve and diversify the chunks for a question."""
    return retrieve(question, store, embedder, k, where)


@task(task_run_name="answer", cache_policy=NO_CACHE)
def answer_task(question: str, hits: list[Hit], embedder: Any, llm: Any) -> tuple[str, list[int]]:
    """Answer from the retrieved chunks: with the LLM if there is one, else extractively."""
    return answer_from(question, hits, embedder, llm)


TASK_STEPS = AskSteps(retrieve=retrieve_task, answer=answer_task)


def answer_markdown(answer: Answer) -> str:
    lines = [f"# Question\n\n{answer.question}\n", f"# Answer ({answer.engine})\n", answer.answer]
    if answer.citations:
        lines += ["", "| # | Source | Heading | Score |", "|---:|---|---|---:|"]
        lines += [
            f"| {c.number} | {c.source} | {c.heading} | {c.score:.3f} |" for c in answer.citations
        ]
    return "\n".join(lines) + "\n"


def _run_name() -> str:
    """`ask <the question's start>`, so the Runs page says what was asked."""
    question = " ".join(str(flow_run.parameters.get("question") or "").split())
    return f"ask {question[:50]}{'…' if len(question) > 50 else ''}"


@flow(
    name="answer-question",
    flow_run_name=_run_name,
    description="Answer a question from the ingested documents, with numbered citations.",
)
def answer_question(
    question: str,
    collection: str | None = None,
    k: int = 5,
    where: dict[str, Any] | None = None,
) -> Answer | State:
    """Answer `question` from the `k` most relevant, diverse chunks (`tasks.answers.ask`).

    The settings, the embedder and the LLM come from the caller's `run_context`
    (pipelines/run_context.py), else from the settings: without an LLM the openai engine is
    used when configured, else the extractive answer.
    """
    logger = get_run_logger()
    context = current_run()
    settings = context.run_settings()
    llm = context.llm if context.llm is not None else llm_for(settings)
    embedder = context.embedder or build_embedder(settings)
    tag_flow_run("pipeline:ask", f"engine:{'openai' if llm is not None else 'extractive'}")
    try:
        answer = ask(
            question,
            lambda: open_store(settings, embedder, collection),
            embedder,
            llm,
            k,
            where,
            TASK_STEPS,
        )
    except GristmillError as exc:
        # as in ingest_documents: the reason in a Failed state, no traceback on the terminal
        logger.info("stopped: %s", exc)
        return Failed(message=str(exc), data=exc)
    if answer.refused:
        # the Failed state carries the reason to the UI; INFO keeps the terminal to one line
        logger.info("refused: %s", answer.reason)
        message = f"refused: {answer.reason}"
        return Failed(message=message, data=RunFailed(message, report=answer))
    publish_report(
        key=REPORT_ARTIFACT_KEY,
        markdown=answer_markdown(answer),
        description=answer.question[:200],
    )
    return Completed(message=f"answered with {len(answer.citations)} citations", data=answer)
