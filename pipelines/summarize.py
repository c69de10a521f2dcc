"""Flow `summarize_transcripts`: transcripts in, structured JSON and Markdown summaries out.

discover -> parse + check utterances -> chunk + check chunks -> summarise chunks (one task per
transcript, its chunks concurrent; calls in flight capped run-wide by `llm_concurrency`)
-> combine (more reduce passes while the notes exceed the budget) -> check the summary
-> write `<out>/<name>.json` and `<out>/<name>.md` atomically, where `<name>` is the
transcript's path under its input folder without the extension (see `output_names`).

Small transcripts (up to 64 KiB) take those steps in groups, one task per group of up to 100
files or 1 MiB (`tasks/summaries/grouped.py`): a task run per three-line file cost more than
its work. Every transcript ends as `ok`, `cached` (unchanged since its summary was written) or
`failed` with its reason; one bad transcript never stops the others, in a group or not.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines.run_context import current_run, run_context
from pipelines.shards import (
    ShardProgress,
    in_shard,
    is_parent,
    leave_report,
    lost_items,
    one_run_per_shard,
    paths_run_name,
    run_shards,
    shard_label,
)
from tasks.chunking import Chunk
from tasks.errors import GristmillError
from tasks.llm import Usage
from tasks.reporting import (
    ItemOutcome,
    Progress,
    ProgressCallback,
    RunProgress,
    SummarizeReport,
    finish_run,
    summarize_report_markdown,
    tag_flow_run,
)
from tasks.settings import Settings
from tasks.summaries import (
    PROMPT_VERSION,
    MeetingNotes,
    NotesResult,
    Summarizer,
    TranscriptSummary,
    build_summarizer,
)
from tasks.summaries.chunks import chunk_transcript, summarize_chunks
from tasks.summaries.final import final_notes
from tasks.summaries.grouped import (
    GROUP_BYTES,
    GROUP_FILES,
    GroupItem,
    plan_groups,
    summarize_group,
)
from tasks.summaries.outputs import existing_summary, output_names, write_summary
from tasks.summaries.reduce import combine_notes, plan_reduce_groups
from tasks.summaries.speakers import speakers_of
from tasks.transcripts import (
    Transcript,
    check_output_folder,
    discover_transcripts,
    load_transcript,
    parse_transcript,
)

REPORT_ARTIFACT_KEY = "summarize-transcripts-report"
PROGRESS_ARTIFACT_KEY = "summarize-transcripts-progress"


class _Outcomes(dict[str, ItemOutcome]):
    """Each transcript's outcome by source; every new one moves the progress on (the CLI's bar
    through `on_progress`, and the run's progress artifact in the UI), with the chunks of the
    transcripts done (a transcript's chunks are known once it is)."""

    def __init__(self, total: int, on_progress: ProgressCallback | None) -> None:
        super().__init__()
        self.total = total
        self.chunks = 0
        self.progress = RunProgress(PROGRESS_ARTIFACT_KEY, "transcripts done (%)", on_progress)
        self.progress(Progress(0, total))

    def __setitem__(self, source: str, outcome: ItemOutcome) -> None:
        new = source not in self
        super().__setitem__(source, outcome)
        if new:
            self.chunks += outcome.chunks
            self.progress(Progress(len(self), self.total, self.chunks, self.chunks))


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, GristmillError) else f"{type(exc).__name__}: {exc}"


@flow(
    name="summarize-transcripts",
    flow_run_name=paths_run_name("summarize", "data/transcripts"),
    description="Summarise meeting transcripts into structured JSON and Markdown.",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
)
@one_run_per_shard
def summarize_transcripts(
    paths: list[str] | None = None,
    out_dir: str | None = None,
    force: bool = False,
    group_files: int = GROUP_FILES,
    group_bytes: int = GROUP_BYTES,
    shards: int = 1,
    shard: int | None = None,
) -> SummarizeReport | State:
    """Summarise every transcript under `paths` into `out_dir`.

    With `shards` above 1 the run is cut by transcript (a hash of its output name): without
    `shard` it starts one run per shard, here or on the work pool, and merges their reports
    (see pipelines/shards.py); with `shard` it summarises that shard's transcripts only.

    Small transcripts go in groups of up to `group_files` files and `group_bytes` bytes, one
    task per group (`group_files` below 2 gives every transcript its own tasks).

    The settings, the summariser (else built from the settings) and `on_progress(Progress)`,
    called as transcripts end (the CLI's bar; the run's progress artifact moves with it), come
    from the caller's `run_context` (pipelines/run_context.py).
    """
    started = time.monotonic()
    logger = get_run_logger()
    context = current_run()
    settings = context.run_settings()
    summarizer = context.summarizer or build_summarizer(settings)
    on_progress = context.on_progress
    inputs = [Path(p) for p in paths] if paths else [settings.transcripts_dir]
    out = Path(out_dir) if out_dir else settings.summaries_dir
    check_output_folder(inputs, out)
    if is_parent(shards, shard):
        parameters = {
            "paths": paths,
            "out_dir": out_dir,
            "force": force,
            "group_files": group_files,
            "group_bytes": group_bytes,
        }
        return _sharded(parameters, shards, inputs, out, settings, summarizer, on_progress, started)
    files, problems = discover_transcripts(inputs, skip=out)
    names = output_names(files)
    if shard is not None:  # this run's part of the job; names come from every file, as above
        mine = [in_shard(stem, shard, shards) for stem in names]
        files = [f for f, keep in zip(files, mine, strict=True) if keep]
        names = [n for n, keep in zip(names, mine, strict=True) if keep]
        problems = [(s, reason) for s, reason in problems if in_shard(s, shard, shards)]
    outcomes = _Outcomes(len(files) + len(problems), on_progress)
    for source, reason in problems:
        outcomes[source] = ItemOutcome(source=source, status="failed", error=reason)
    logger.info(
        "%d transcripts to summarise with %s (%s)%s",
        len(files),
        summarizer.engine,
        summarizer.model,
        shard_label(shard, shards),
    )

    tag_flow_run("pipeline:summarize", f"engine:{summarizer.engine}")
    shared = {n for n, count in Counter(n.casefold() for n in names).items() if count > 1}
    items: list[GroupItem] = []
    for found, stem in zip(files, names, strict=True):
        source = str(found.path)
        if stem.casefold() in shared:  # output_names avoids this unless a name mimics a hash
            error = f"output name {stem!r} is another input's too; rename one"
            outcomes[source] = ItemOutcome(source=source, status="failed", error=error)
            continue
        # an unchanged transcript is answered from its stored hash: no task run, no checks
        cached = None if force else _stored(found.path, stem, out, summarizer)
        if cached is not None:
            outcomes[source] = cached
        else:
            items.append(GroupItem(found.path, source, stem))

    # Small transcripts in groups, one task each (a task run per file cost more than the
    # work); the rest parsed in the pool, each chunked as it arrives with its map started at
    # once (one map task per transcript: its chunks run on the task's own pool, and the LLM
    # caps calls in flight run-wide at `llm_concurrency`, see summarize_chunks).
    groups, alone = plan_groups(
        [_size(item.path) for item in items], group_files=group_files, group_bytes=group_bytes
    )
    grouped = [
        (
            [items[i] for i in group],
            summarize_group.submit(
                [items[i] for i in group],
                summarizer,
                out,
                items[group[0]].path.name + (f" and {len(group) - 1} more" if group[1:] else ""),
                settings.chunk_tokens,
                settings.chunk_overlap_tokens,
                settings.llm_concurrency,
                force,
            ),
        )
        for group in groups
    ]
    transcripts: dict[str, tuple[Transcript, str, list[Chunk], list[str]]] = {}
    pending: dict[str, PrefectFuture[list[NotesResult]]] = {}
    loaded = [
        (items[i], load_transcript.submit(items[i].path, source=items[i].source)) for i in alone
    ]
    for item, future in loaded:
        source, stem = item.source, item.stem
        warnings: list[str] = []
        try:
            transcript, utterance_check = future.result()
            warnings = transcript.warnings
            done = (
                None if force else existing_summary(out, stem, transcript.content_hash, summarizer)
            )
            if done is not None:
                outcomes[source] = ItemOutcome(
                    source=source, status="cached", output=str(done), warnings=warnings
                )
                continue
            chunks, chunk_check = chunk_transcript(
                transcript, settings.chunk_tokens, settings.chunk_overlap_tokens
            )
        except Exception as exc:
            outcomes[source] = ItemOutcome(
                source=source, status="failed", error=_reason(exc), warnings=warnings
            )
            continue
        quality = [utterance_check.summary_line(), chunk_check.summary_line()]
        transcripts[source] = (transcript, stem, chunks, quality)
        pending[source] = summarize_chunks.submit(
            chunks, summarizer, transcript.name, settings.llm_concurrency, force
        )
    for members, group_future in grouped:
        try:
            ends = group_future.result()
        except Exception as exc:
            for item in members:
                outcomes[item.source] = ItemOutcome(
                    source=item.source, status="failed", error=_reason(exc)
                )
            continue
        for item, end in zip(members, ends, strict=True):
            if isinstance(end, ItemOutcome):
                outcomes[item.source] = end
                continue
            transcripts[item.source] = (end.transcript, item.stem, end.chunks, end.quality)
            pending[item.source] = summarize_chunks.submit(
                end.chunks, summarizer, end.transcript.name, settings.llm_concurrency, force
            )

    for source, (transcript, stem, chunks, quality) in transcripts.items():
        try:
            results = pending[source].result()
            notes, passes, reduce_usage = _reduce(
                [r.notes for r in results], summarizer, transcript.name, settings, force
            )
            usage = Usage.total([r.usage for r in results]) + reduce_usage
            speakers = speakers_of(transcript.utterances)
            summary = TranscriptSummary(
                **final_notes(notes, speakers).model_dump(),
                source=source,
                engine=summarizer.engine,
                model=summarizer.model,
                chunk_count=len(chunks),
                reduce_passes=passes,
                content_hash=transcript.content_hash,
                prompt_version=getattr(summarizer, "version", PROMPT_VERSION),
                usage=usage,
            )
            path, summary_check = write_summary(summary, out, stem)
        except Exception as exc:
            logger.error("%s failed: %s", source, _reason(exc))
            outcomes[source] = ItemOutcome(
                source=source,
                status="failed",
                error=_reason(exc),
                chunks=len(chunks),
                quality=quality,
                warnings=transcript.warnings,
            )
            continue
        outcomes[source] = ItemOutcome(
            source=source,
            status="ok",
            output=str(path),
            chunks=len(chunks),
            llm_calls=usage.calls,
            usage=usage,
            quality=[*quality, summary_check.summary_line()],
            warnings=transcript.warnings,
        )

    outcomes.progress.complete()
    report = _report(list(outcomes.values()), summarizer, started)
    if shard is not None:
        leave_report(settings, report)
    return _finish(report)


def _report(outcomes: list[ItemOutcome], summarizer: Summarizer, started: float) -> SummarizeReport:
    ordered = sorted(outcomes, key=lambda o: o.source)
    total = Usage.total([o.usage for o in ordered])
    return SummarizeReport(
        transcripts=ordered,
        engine=summarizer.engine,
        model=summarizer.model,
        llm_calls=total.calls,
        usage=total,
        duration_s=round(time.monotonic() - started, 3),
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )


def _finish(report: SummarizeReport) -> State:
    """The run's report artifact and its final state: Failed when a transcript failed."""
    return finish_run(
        report,
        key=REPORT_ARTIFACT_KEY,
        markdown=summarize_report_markdown(report),
        failed=bool(report.failed),
        problems=[f"{Path(t.source).name}: {t.error}" for t in report.failed[:5]],
    )


def _sharded(
    parameters: dict[str, Any],
    shards: int,
    inputs: list[Path],
    out: Path,
    settings: Settings,
    summarizer: Summarizer,
    on_progress: ProgressCallback | None,
    started: float,
) -> State:
    """The parent of a sharded job: run the shards, merge their reports. A transcript of a
    shard that left no report (it crashed more than `shard_attempts` times) ends `failed` with
    that reason: nothing is lost from the report. Shards run here share its settings and
    summariser."""
    files, problems = discover_transcripts(inputs, skip=out)
    keys = [(n, str(f.path)) for f, n in zip(files, output_names(files), strict=True)]
    keys += [(source, source) for source, _ in problems]
    progress = ShardProgress(on_progress, len(keys)) if on_progress else None
    with run_context(settings=settings, summarizer=summarizer):
        results = run_shards(
            summarize_transcripts, parameters, shards, settings, SummarizeReport, progress
        )
    outcomes = [o for r in results if r.report is not None for o in r.report.transcripts]
    sources = dict(keys)
    for key, error in lost_items(results, sources, shards).items():
        outcomes.append(ItemOutcome(source=sources[key], status="failed", error=error))
    return _finish(_report(outcomes, summarizer, started))


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def needs_checks(
    paths: list[Path] | None,
    out_dir: Path | None,
    settings: Settings,
    summarizer: Summarizer,
    force: bool,
) -> bool:
    """Whether a run would parse a transcript (and so run the quality checks) rather than
    answer every one from its stored summary: the CLI then starts their import early."""
    out = out_dir or settings.summaries_dir
    try:
        files, _problems = discover_transcripts(paths or [settings.transcripts_dir], skip=out)
    except GristmillError:
        return False
    return force or any(
        _stored_summary(f.path, stem, out, summarizer) is None
        for f, stem in zip(files, output_names(files), strict=True)
    )


def _stored(path: Path, stem: str, out: Path, summarizer: Summarizer) -> ItemOutcome | None:
    """`cached` when `out` holds the summary of these exact bytes by this engine, model and
    prompt: answered from the stored hash in the flow itself, with no task run (and so no
    quality-check import) per unchanged transcript. None sends it the usual way."""
    done = _stored_summary(path, stem, out, summarizer)
    if done is None:
        return None
    try:
        warnings = parse_transcript(path, source=str(path)).warnings  # milliseconds, no checks
    except GristmillError:
        return None
    return ItemOutcome(source=str(path), status="cached", output=str(done), warnings=warnings)


def _stored_summary(path: Path, stem: str, out: Path, summarizer: Summarizer) -> Path | None:
    try:
        content_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return existing_summary(out, stem, content_hash, summarizer)


def _reduce(
    parts: list[MeetingNotes],
    summarizer: Summarizer,
    title: str,
    settings: Settings,
    force: bool,
) -> tuple[MeetingNotes, int, Usage]:
    """Combine notes until one remains; groups that exceed the budget take another pass."""
    combine = combine_notes.with_options(refresh_cache=force)
    usage = Usage()
    passes = 0
    while True:
        groups = plan_reduce_groups(parts, settings.reduce_tokens)
        passes += 1
        if len(groups) == 1:
            result = combine(parts, summarizer, title, True, "final")
            return result.notes, passes, usage + result.usage
        futures = [
            combine.submit([parts[i] for i in group], summarizer, title, False, f"pass {passes}")
            for group in groups
        ]
        results = [f.result() for f in futures]
        usage = usage + Usage.total([r.usage for r in results])
        parts = [r.notes for r in results]


def summarize_flow_for(settings: Settings) -> Flow[..., SummarizeReport | State]:
    """The flow on the task runner the settings ask for (`pipelines/runners.py`), its threads
    sized to the LLM concurrency they allow."""
    from pipelines.runners import task_runner_for

    return summarize_transcripts.with_options(
        task_runner=task_runner_for(settings, settings.llm_concurrency)
    )
