"""Flow `ingest_documents`: documents in, an up-to-date Chroma collection out.

discover -> per batch of documents: load + check, chunk + check, plan against the store, embed
(stored vectors reused by content hash), upsert, delete stale ids -> full cleanup -> verify.
Documents that fail a check are quarantined with their reasons and the run goes on; documents
with nothing to index (empty, front matter only) are skipped, in words, and fail nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import Flow, flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from pipelines.run_context import current_run, run_context
from pipelines.runners import check_cluster_store
from pipelines.shards import (
    ShardProgress,
    in_shard,
    is_parent,
    leave_report,
    lost_items,
    lost_shards,
    one_run_per_shard,
    paths_run_name,
    run_shards,
    shard_label,
)
from tasks.chroma_client import require_chroma_server, server_errors, writer_lock
from tasks.documents import DocumentPath, discover_documents
from tasks.embeddings import Embedder, build_embedder
from tasks.errors import GristmillError, UsageError
from tasks.ingestion import (
    TASK_STEPS,
    IngestReport,
    QuarantineRecord,
    check_cleanup,
    delete_missing_sources,
    ingest_files,
    ingest_report_markdown,
    merge_ingest_reports,
    unique_sources,
    write_quarantine,
)
from tasks.reporting import ProgressCallback, RunProgress, finish_run, tag_flow_run
from tasks.retrieval import open_store_for_writing
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore

REPORT_ARTIFACT_KEY = "ingest-documents-report"
PROGRESS_ARTIFACT_KEY = "ingest-documents-progress"


@flow(
    name="ingest-documents",
    flow_run_name=paths_run_name("ingest", "data/documents"),
    description="Ingest documents into a Chroma collection, incrementally and checked.",
)
@one_run_per_shard
def ingest_documents(
    paths: list[str] | None = None,
    collection: str | None = None,
    cleanup: str = "incremental",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    shards: int = 1,
    shard: int | None = None,
) -> IngestReport | State:
    """Bring the collection in line with the documents under `paths`.

    The settings, the embedder and an `on_progress(Progress)` callback (documents done and
    chunks embedded, with every sub-batch the embedder finishes) come from the caller's
    `run_context` (pipelines/run_context.py); the embedder is built from the settings when none
    is set. With `shards` above 1 the documents are cut by a hash of their source name: without
    `shard` the run starts one run per shard (here or on the work pool, see
    pipelines/shards.py), merges their reports and then does the full cleanup once; with
    `shard` it ingests that part only.
    """
    try:
        context = current_run()
        settings = context.run_settings()
        job = _Job(
            paths,
            collection or settings.collection,
            cleanup,
            include,
            exclude,
            settings,
            context.embedder or build_embedder(settings),
            context.on_progress,
        )
        if is_parent(shards, shard):
            return _sharded(job, shards)
        return _ingest(job, shard, shards)
    except GristmillError as exc:
        # Chroma unreachable, the writer lock held, another embedding model: a Failed state
        # with the reason, not a raised error whose traceback Prefect prints on the terminal
        # before the CLI's one line. Callers get the error back from the state; the UI shows
        # it as the state message (logged at INFO so the terminal does not print it twice).
        get_run_logger().info("stopped: %s", exc)
        return Failed(message=str(exc), data=exc)


@dataclass(frozen=True)
class _Job:
    """One ingest as asked: the documents to read, the collection to write, and with what."""

    paths: list[str] | None
    collection: str
    cleanup: str
    include: list[str] | None
    exclude: list[str] | None
    settings: Settings
    embedder: Embedder
    on_progress: ProgressCallback | None

    def documents(self) -> list[DocumentPath]:
        inputs = [Path(p) for p in self.paths] if self.paths else [self.settings.documents_dir]
        return discover_documents(inputs, include=self.include, exclude=self.exclude)

    def open_store(self) -> ChunkStore:
        """The collection's chunks (and its lexical index); call it holding the writer lock."""
        return open_store_for_writing(self.settings, self.embedder, self.collection)


def _ingest(job: _Job, shard: int | None = None, shards: int = 1) -> IngestReport | State:
    settings, embedder = job.settings, job.embedder
    mode = check_cleanup(job.cleanup)
    if shard is not None and mode == "full":
        raise UsageError("a shard cannot do a full cleanup: its parent does, after every shard")
    check_cluster_store(settings)  # on Dask the workers write: a Chroma server's job
    files = [f for f in job.documents() if in_shard(f.source, shard, shards)]
    get_run_logger().info(
        "%d documents to ingest into %r (cleanup %s)%s",
        len(files),
        job.collection,
        mode,
        shard_label(shard, shards),
    )
    report_progress = RunProgress(PROGRESS_ARTIFACT_KEY, "documents ingested (%)", job.on_progress)

    tag_flow_run("pipeline:ingest", f"collection:{job.collection}", f"embedder:{embedder.name}")
    with writer_lock(settings), server_errors():
        store = job.open_store()
        store.sync_lexical()  # a crash or an older gristmill may have left it behind
        report = ingest_files(
            files,
            store,
            embedder,
            settings,
            cleanup=mode,
            run_id=str(flow_run.id) if flow_run.id else None,
            steps=TASK_STEPS,
            on_progress=report_progress,
            on_cluster=settings.task_runner == "dask",
        )
    report_progress.complete()
    if shard is not None:
        leave_report(settings, report)
    return _finish(report)


def _finish(report: IngestReport) -> State:
    """The run's report artifact and final state: Failed when a document was quarantined."""
    return finish_run(
        report,
        key=REPORT_ARTIFACT_KEY,
        markdown=ingest_report_markdown(report),
        failed=bool(report.quarantine),
        problems=[f"quarantined {r.source}: {r.reason}" for r in report.quarantine[:5]],
    )


def _sharded(job: _Job, shards: int) -> State:
    """The parent of a sharded ingest: the shards (each with incremental cleanup at most), their
    reports merged, then what must happen once: a full cleanup deletes the documents that no
    shard saw, and the collection is counted. Shards run here share its settings and
    embedder."""
    started = time.monotonic()
    settings, embedder = job.settings, job.embedder
    mode = check_cleanup(job.cleanup)
    if settings.work_pool:
        require_chroma_server(settings, "shards on a work pool write from several machines")
    files, _ = unique_sources(job.documents())
    parameters = {
        "paths": job.paths,
        "collection": job.collection,
        "cleanup": "incremental" if mode == "full" else mode,
        "include": job.include,
        "exclude": job.exclude,
    }
    progress = ShardProgress(job.on_progress, len(files)) if job.on_progress else None
    with run_context(settings=settings, embedder=embedder):
        results = run_shards(ingest_documents, parameters, shards, settings, IngestReport, progress)
    report = merge_ingest_reports([r.report for r in results if r.report is not None])
    report.collection, report.cleanup = job.collection, mode
    report.run_id = str(flow_run.id) if flow_run.id else report.run_id
    for source, reason in lost_items(results, [f.source for f in files], shards).items():
        report.quarantine.append(QuarantineRecord(source=source, reason=reason, unexpected=True))
    with writer_lock(settings), server_errors():
        store = job.open_store()
        if mode == "full" and not lost_shards(results):  # a lost shard's documents were not seen
            gone, chunks = delete_missing_sources(store, store.sources(), {f.source for f in files})
            report.deleted, report.chunks_deleted = len(gone), report.chunks_deleted + chunks
        report.collection_count = store.count()
    report.quarantined = len(report.quarantine)
    report.duration_s = round(time.monotonic() - started, 3)
    path = write_quarantine(settings.quarantine_dir, report.run_id, report.quarantine)
    report.quarantine_path = str(path) if path else None
    return _finish(report)


def ingest_flow_for(settings: Settings) -> Flow[..., IngestReport | State]:
    """The flow on the task runner the settings ask for (`pipelines/runners.py`): on a Dask
    cluster each document batch is a task run on a worker."""
    from pipelines.runners import task_runner_for

    return ingest_documents.with_options(task_runner=task_runner_for(settings, 2))
