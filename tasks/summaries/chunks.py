"""Map: chunk a transcript, gate the chunks on quality, summarise them (resumable per chunk)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.chunking import Chunk, chunk_utterances
from tasks.errors import GristmillError, LLMError
from tasks.quality import QualityReport, chunk_expectations, validate_table
from tasks.summaries.cache import chunk_cache_key, read_notes
from tasks.summaries.models import NotesResult, Summarizer
from tasks.transcripts.model import Transcript


@task(
    task_run_name="chunk {transcript.name}",
    cache_policy=NO_CACHE,
)
def chunk_transcript(
    transcript: Transcript, max_tokens: int, overlap_tokens: int
) -> tuple[list[Chunk], QualityReport]:
    """Chunk a transcript by tokens and gate the chunk table on quality."""
    import pandas as pd

    chunks = chunk_utterances(transcript.utterances, max_tokens, overlap_tokens)
    frame = pd.DataFrame(
        {
            "chunk_id": [f"{transcript.name}:{c.index}" for c in chunks],
            "token_count": [c.token_count for c in chunks],
            "first_utterance": [c.first_utterance for c in chunks],
            "last_utterance": [c.last_utterance for c in chunks],
            "next_allowed_start": [0] + [c.last_utterance + 1 for c in chunks[:-1]],
        }
    )
    report = validate_table(
        frame, "chunks", chunk_expectations(max_tokens, len(transcript.utterances))
    )
    return chunks, report.raise_for_errors()


class ChunkSkipped(Exception):
    """A chunk not sent because a sibling failed permanently (same endpoint, same outcome)."""


@task(task_run_name="summarize {title}", cache_policy=NO_CACHE)
def summarize_chunks(
    chunks: list[Chunk],
    summarizer: Summarizer,
    title: str,
    concurrency: int = 4,
    refresh: bool = False,
) -> list[NotesResult]:
    """Summarise every chunk of one transcript, `concurrency` at a time.

    One task run per transcript, not per chunk: a task run costs ~25 ms of engine work on this
    machine (state changes, cache lookup, result write), which at 38 chunks was most of the
    flow's overhead over the ideal schedule (benchmarks/README.md). Resume stays per chunk:
    each chunk's notes are a record in Prefect's result store under `chunk_cache_key`, written
    as soon as the chunk is done, so a re-run or a resumed crash pays only for chunks not yet
    done (reused notes count no usage: they cost nothing this run). `refresh` recomputes.

    A permanent error (bad key, unknown model, bad request) stops the chunks not yet sent: they
    would meet the same answer. Calls in flight finish and are kept. Transient failures let the
    other chunks finish, so the re-run pays only for the failed one.
    """
    from prefect.results import get_result_store

    logger = get_run_logger()
    store = get_result_store()
    count = len(chunks)
    results: list[NotesResult | None] = [None] * count
    todo: list[tuple[Chunk, str]] = []
    for chunk in chunks:
        key = chunk_cache_key(summarizer, title, count, chunk)
        cached = None if refresh else read_notes(store, key)
        if cached is None:
            todo.append((chunk, key))
        else:
            results[chunk.index] = NotesResult(notes=cached.notes, attempts=0)
    stop = threading.Event()

    def run(chunk: Chunk, key: str) -> NotesResult:
        if stop.is_set():
            raise ChunkSkipped
        try:
            result = summarizer.summarize_chunk(chunk, title=title, chunk_count=count)
        except LLMError as exc:
            if not exc.transient:
                stop.set()
            raise
        store.write(result, key=key)
        return result

    failures: list[tuple[int, BaseException]] = []
    if todo:
        with ThreadPoolExecutor(min(max(concurrency, 1), len(todo))) as pool:
            futures = [(chunk.index, pool.submit(run, chunk, key)) for chunk, key in todo]
            for index, future in futures:
                try:
                    results[index] = future.result()
                except ChunkSkipped:
                    continue
                except Exception as exc:
                    failures.append((index, exc))
    logger.info(
        "%s: %d of %d parts summarised, %d reused, %d failed",
        title,
        sum(r is not None for r in results) - (count - len(todo)),
        count,
        count - len(todo),
        len(failures),
    )
    if failures:
        index, first = failures[0]
        skipped = sum(r is None for r in results) - len(failures)
        extra = [f"{len(failures) - 1} more parts failed"] if len(failures) > 1 else []
        extra += [f"{skipped} parts not sent"] if skipped else []
        where = f"part {index + 1} of {count}" + (f" ({', '.join(extra)})" if extra else "")
        if isinstance(first, GristmillError):
            first.message = f"{where}: {first.message}"
            raise first
        raise RuntimeError(f"{where}: {type(first).__name__}: {first}") from first
    return [r for r in results if r is not None]
