"""Many small transcripts in one task: a task run per file cost more than the work (issue 16).

Small files go in groups of at most `GROUP_FILES` files and `GROUP_BYTES` bytes; a file over
`SMALL_BYTES` is not small and keeps its own tasks. In a group every transcript still ends on
its own: parsed, checked, summarised and written alone, and failing alone with its reason. The
quality suites run once per group, on one table with the rows of every transcript; a failing
row fails only the transcript it belongs to. A transcript that needs several chunks leaves the
group once chunked (`Chunked`) and takes the per-transcript map and reduce tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.chunking import Chunk, chunk_utterances
from tasks.errors import DataQualityError, GristmillError
from tasks.quality import (
    ExpectationOutcome,
    QualityReport,
    grouped_chunk_expectations,
    grouped_utterance_expectations,
    summary_expectations,
    validate_table,
)
from tasks.reporting import ItemOutcome, write_atomically
from tasks.summaries.cache import chunk_cache_key, read_notes
from tasks.summaries.final import final_notes
from tasks.summaries.models import NotesResult, Summarizer, TranscriptSummary
from tasks.summaries.outputs import existing_summary, render_markdown, summaries_frame
from tasks.summaries.speakers import speakers_of
from tasks.transcripts.model import Transcript
from tasks.transcripts.parsing import parse_transcript

if TYPE_CHECKING:
    import pandas as pd
    from prefect.results import ResultStore

SMALL_BYTES = 64 * 1024
"""A transcript file up to this size is small (about 16k tokens: a few chunks at most)."""
GROUP_FILES = 100
GROUP_BYTES = 1024 * 1024
"""A group of small transcripts holds at most this many files and bytes."""

T = TypeVar("T")


class GroupItem(NamedTuple):
    """A transcript file, its name in the report and its output name."""

    path: Path
    source: str
    stem: str


class Chunked(NamedTuple):
    """A grouped transcript of several chunks, handed back for the per-transcript tasks."""

    transcript: Transcript
    chunks: list[Chunk]
    quality: list[str]


def plan_groups(
    sizes: Sequence[int | None],
    *,
    small_bytes: int = SMALL_BYTES,
    group_files: int = GROUP_FILES,
    group_bytes: int = GROUP_BYTES,
) -> tuple[list[list[int]], list[int]]:
    """Positions of small files in consecutive groups, and those of files that stay alone.

    A size of None (the file could not be read) stays alone: its own task says why.
    `group_files` below 2 groups nothing.
    """
    groups: list[list[int]] = []
    alone: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if size is None or size > min(small_bytes, group_bytes) or group_files < 2:
            alone.append(i)
            continue
        if not groups or len(groups[-1]) >= group_files or used + size > group_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups, alone


@task(task_run_name="summarize {label}", cache_policy=NO_CACHE)
def summarize_group(
    items: list[GroupItem],
    summarizer: Summarizer,
    out_dir: Path,
    label: str,
    chunk_tokens: int,
    overlap_tokens: int,
    concurrency: int = 4,
    force: bool = False,
) -> list[ItemOutcome | Chunked]:
    """Summarise a group of small transcripts; one outcome (or `Chunked`) per item, in order."""
    from prefect.results import get_result_store

    logger = get_run_logger()
    results: list[ItemOutcome | Chunked | None] = [None] * len(items)
    warnings: dict[int, list[str]] = {}

    single: list[int] = []  # one chunk each: summarised here, once chunked and checked
    quality: list[str] = []

    def fail(i: int, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, GristmillError) else f"{type(exc).__name__}: {exc}"
        results[i] = ItemOutcome(
            source=items[i].source,
            status="failed",
            error=reason,
            chunks=1 if i in single else 0,
            quality=quality if i in single else [],
            warnings=warnings.get(i, []),
        )

    transcripts: dict[int, Transcript] = {}
    for i, item in enumerate(items):
        try:
            transcript = parse_transcript(item.path, source=item.source)
        except Exception as exc:
            fail(i, exc)
            continue
        warnings[i] = transcript.warnings
        if transcript.warnings:
            logger.warning("%s: %s", item.source, "; ".join(transcript.warnings))
        done = (
            None
            if force
            else existing_summary(out_dir, item.stem, transcript.content_hash, summarizer)
        )
        if done is not None:
            results[i] = ItemOutcome(
                source=item.source, status="cached", output=str(done), warnings=transcript.warnings
            )
        else:
            transcripts[i] = transcript

    utterance_check = _gate(
        transcripts, _utterance_frame, "utterances", grouped_utterance_expectations, fail
    )
    chunked: dict[int, list[Chunk]] = {}
    for i in list(transcripts):
        try:
            chunked[i] = chunk_utterances(transcripts[i].utterances, chunk_tokens, overlap_tokens)
        except Exception as exc:
            fail(i, exc)
    chunk_check = _gate(
        chunked,
        _chunk_frame(transcripts),
        "chunks",
        lambda: grouped_chunk_expectations(chunk_tokens),
        fail,
    )
    quality += [utterance_check.summary_line(), chunk_check.summary_line()]
    for i, chunks in chunked.items():
        if len(chunks) == 1:
            single.append(i)
        else:
            results[i] = Chunked(transcripts[i], chunks, quality)

    store = get_result_store()

    def summarize(i: int) -> TranscriptSummary:
        return _summarize_one(
            transcripts[i], items[i].source, chunked[i][0], summarizer, store, force
        )

    summaries: dict[int, TranscriptSummary] = {}
    with ThreadPoolExecutor(max(1, min(concurrency, len(single) or 1))) as pool:
        futures = [(i, pool.submit(summarize, i)) for i in single]
        for i, future in futures:
            try:
                summaries[i] = future.result()
            except Exception as exc:
                fail(i, exc)
    summary_check = _gate(
        summaries,
        lambda ready: _concat(ready, summaries_frame),
        "summaries",
        summary_expectations,
        fail,
    )
    for i, summary in summaries.items():
        if results[i] is not None:
            continue
        try:
            path = _write(summary, out_dir, items[i].stem)
        except Exception as exc:
            fail(i, exc)
            continue
        results[i] = ItemOutcome(
            source=items[i].source,
            status="ok",
            output=str(path),
            chunks=1,
            llm_calls=summary.usage.calls,
            usage=summary.usage,
            quality=[*quality, summary_check.summary_line()],
            warnings=warnings.get(i, []),
        )
    logger.info(
        "%s: %d transcripts, %d summarised here, %d with several chunks passed on",
        label,
        len(items),
        sum(isinstance(r, ItemOutcome) and r.status == "ok" for r in results),
        sum(isinstance(r, Chunked) for r in results),
    )
    lost = ItemOutcome(source="", status="failed", error="not summarised: an internal error")
    return [r or lost.model_copy(update={"source": items[i].source}) for i, r in enumerate(results)]


def _summarize_one(
    transcript: Transcript,
    source: str,
    chunk: Chunk,
    summarizer: Summarizer,
    store: ResultStore,
    force: bool,
) -> TranscriptSummary:
    """Map and final combine of a one-chunk transcript. Notes that cost model calls are stored
    under `chunk_cache_key` as `summarize_chunks` stores them, so a re-run after a later step
    failed does not pay again; free notes (the offline engine's) are not: writing the record
    took longer than making them."""
    key = chunk_cache_key(summarizer, transcript.name, 1, chunk)
    stored = None if force else read_notes(store, key)
    if stored is not None:
        mapped = NotesResult(notes=stored.notes, attempts=0)
    else:
        try:
            mapped = summarizer.summarize_chunk(chunk, title=transcript.name, chunk_count=1)
        except GristmillError as exc:
            exc.message = f"part 1 of 1: {exc.message}"
            raise
        except Exception as exc:
            raise RuntimeError(f"part 1 of 1: {type(exc).__name__}: {exc}") from exc
        if mapped.usage.calls:
            store.write(mapped, key=key)
    combined = summarizer.combine([mapped.notes], title=transcript.name, final=True)
    notes = final_notes(combined.notes, speakers_of(transcript.utterances))
    return TranscriptSummary(
        **notes.model_dump(),
        source=source,
        engine=summarizer.engine,
        model=summarizer.model,
        chunk_count=1,
        reduce_passes=1,
        content_hash=transcript.content_hash,
        prompt_version=summarizer.version,
        usage=mapped.usage + combined.usage,
    )


def _write(summary: TranscriptSummary, out_dir: Path, stem: str) -> Path:
    """`<stem>.md`, then `<stem>.json` (its presence marks the transcript done), atomically."""
    json_path = out_dir / f"{stem}.json"
    write_atomically(out_dir / f"{stem}.md", render_markdown(summary))
    write_atomically(json_path, summary.model_dump_json(indent=2) + "\n")
    return json_path


def _gate(
    rows_of: dict[int, T],
    frame_of: Callable[[dict[int, T]], tuple[pd.DataFrame, list[int]]],
    suite: str,
    expectations: Callable[[], list[Any]],
    fail: Callable[[int, BaseException], None],
) -> QualityReport:
    """Validate the rows of every item in one table; fail (and drop) the items with bad rows,
    each with the reason its own table would have given. No rows, no validation (an all-cached
    group never imports great-expectations)."""
    if not rows_of:
        return QualityReport(suite=suite, rows=0, success=True, evaluated=0)
    frame, owners = frame_of(rows_of)
    report = validate_table(frame, suite, expectations(), result_format="COMPLETE")
    failed: dict[int, list[ExpectationOutcome]] = {}
    for error in report.errors:
        rows: dict[int, list[int]] = {}
        for row in error.unexpected_rows:
            rows.setdefault(owners[row], []).append(row)
        for i in rows if error.unexpected_rows else rows_of:
            bad = rows.get(i, [])
            values = frame.get(error.column)
            one = error.model_copy(
                update={
                    "unexpected_count": len(bad) if bad else error.unexpected_count,
                    "examples": [str(values.iloc[r])[:60] for r in bad[:3]]
                    if values is not None
                    else [],
                    "unexpected_rows": [],
                }
            )
            failed.setdefault(i, []).append(one)
    for i, errors in failed.items():
        if i in rows_of:
            del rows_of[i]
            reason = QualityReport(
                suite=suite, rows=0, success=False, evaluated=report.evaluated, errors=errors
            ).reason()
            fail(i, DataQualityError(reason, failed=[e.model_dump() for e in errors]))
    return report.model_copy(update={"success": True, "errors": []})


def _concat(
    rows_of: dict[int, T], frame: Callable[[T], pd.DataFrame]
) -> tuple[pd.DataFrame, list[int]]:
    import pandas as pd

    frames = [frame(value) for value in rows_of.values()]
    owners = [i for i, f in zip(rows_of, frames, strict=True) for _ in range(len(f))]
    return pd.concat(frames, ignore_index=True), owners


def _utterance_frame(transcripts: dict[int, Transcript]) -> tuple[pd.DataFrame, list[int]]:
    import pandas as pd

    owners = [i for i, t in transcripts.items() for _ in t.utterances]
    rows = [
        {
            "index": u.index,
            "speaker": u.speaker,
            "text": u.text,
            "step": u.index - (t.utterances[n - 1].index if n else -1),
        }
        for i, t in transcripts.items()
        for n, u in enumerate(t.utterances)
    ]
    return pd.DataFrame(rows), owners


def _chunk_frame(
    transcripts: dict[int, Transcript],
) -> Callable[[dict[int, list[Chunk]]], tuple[pd.DataFrame, list[int]]]:
    def frame(chunked: dict[int, list[Chunk]]) -> tuple[pd.DataFrame, list[int]]:
        import pandas as pd

        rows: list[dict[str, Any]] = []
        owners: list[int] = []
        for i, chunks in chunked.items():
            last = len(transcripts[i].utterances) - 1
            for n, c in enumerate(chunks):
                owners.append(i)
                rows.append(
                    {
                        "chunk_id": f"{i}:{c.index}",
                        "token_count": c.token_count,
                        "first_utterance": c.first_utterance,
                        "next_allowed_start": chunks[n - 1].last_utterance + 1 if n else 0,
                        "past_end": c.last_utterance - last,
                        "uncovered_tail": last - c.last_utterance if n == len(chunks) - 1 else 0,
                    }
                )
        return pd.DataFrame(rows), owners

    return frame
