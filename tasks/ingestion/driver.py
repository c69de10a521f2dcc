"""`ingest_files`: bring a collection in line with a list of files, document batch by
document batch, two in flight."""

from __future__ import annotations

import contextvars
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from tasks.documents import DocumentPath
from tasks.embeddings import Embedder
from tasks.ingestion.batch import BatchOutcome
from tasks.ingestion.prepare import chunk_budget
from tasks.ingestion.progress import IngestProgress, OneEmbedAtATime
from tasks.ingestion.report import IngestReport, QuarantineRecord, write_quarantine
from tasks.ingestion.steps import PLAIN_STEPS, IngestSteps
from tasks.ingestion.store import check_cleanup
from tasks.portable import let_go
from tasks.reporting import ProgressCallback
from tasks.vectorstore import ChunkStore

if TYPE_CHECKING:
    from tasks.settings import Settings


DOCUMENTS_PER_BATCH = 32


# Document batches ingested at once; their embedding calls take turns (`OneEmbedAtATime`).
BATCHES_IN_FLIGHT = 2

# Document batches handed to a Dask cluster at once: its workers each load, check, embed and
# write one (a worker with more threads, more); the rest wait in its scheduler's queue.
BATCHES_ON_A_CLUSTER = 16


def batched(items: Sequence[DocumentPath], size: int) -> Iterable[list[DocumentPath]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def in_flight(
    run: Callable[[list[DocumentPath]], BatchOutcome],
    batches: Iterable[list[DocumentPath]],
    width: int = BATCHES_IN_FLIGHT,
) -> Iterator[tuple[list[DocumentPath], BatchOutcome]]:
    """`run` over `batches` with `width` at once, each in a copy of the caller's context (so a
    Prefect task called in it belongs to the caller's flow run); yields in batch order. After a
    failure no new batch starts; the one still running finishes, then the error is raised."""
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="ingest-batch") as pool:
        pending: deque[tuple[list[DocumentPath], Future[BatchOutcome]]] = deque()
        try:
            for batch in batches:
                if len(pending) == width:
                    first, future = pending.popleft()
                    yield first, future.result()
                pending.append((batch, pool.submit(contextvars.copy_context().run, run, batch)))
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def unique_sources(
    files: Sequence[DocumentPath],
) -> tuple[list[DocumentPath], list[QuarantineRecord]]:
    """Files with distinct source names; a later file with a name already taken is quarantined
    (two documents under one source would replace each other's chunks)."""
    seen: dict[str, DocumentPath] = {}
    duplicates: list[QuarantineRecord] = []
    for found in files:
        first = seen.setdefault(found.source, found)
        if first is not found:
            duplicates.append(
                QuarantineRecord(
                    source=found.source,
                    reason=f"duplicate source name: {found.path} and {first.path} are both "
                    f"{found.source!r}; ingest their folders separately or rename one",
                    failed_expectations=["expect_column_values_to_be_unique(source)"],
                )
            )
    return list(seen.values()), duplicates


def ingest_files(
    files: Sequence[DocumentPath],
    store: ChunkStore,
    embedder: Embedder,
    settings: Settings,
    *,
    cleanup: str = "incremental",
    run_id: str | None = None,
    steps: IngestSteps = PLAIN_STEPS,
    on_progress: ProgressCallback | None = None,
    on_cluster: bool = False,
) -> IngestReport:
    """Bring `store` in line with `files`; the caller holds the writer lock.

    `on_progress` hears documents done and chunks embedded as they change (`IngestProgress`),
    from the start on: the count of documents before the first batch ends.

    `on_cluster` (the flow's task runner is a Dask cluster, `steps` its tasks): each document
    batch is a task run on a worker, which gets the store and the embedder as the settings
    that built them (`tasks/portable.py`) and writes to the same Chroma server; progress then
    moves a batch at a time.

    Writes the quarantine file; raises DataQualityError when verification fails.
    """
    started = time.monotonic()
    mode = check_cleanup(cleanup)
    run_id = run_id or uuid.uuid4().hex
    report = IngestReport(
        collection=store.name, embedding_model=store.embedding_name, cleanup=mode, run_id=run_id
    )
    max_tokens = chunk_budget(settings.doc_chunk_tokens, embedder)
    stored = store.sources()
    store.left_out()  # made once here, not by two batches at once
    expected: dict[str, set[str]] = {}
    present: set[str] = set()
    files, duplicates = unique_sources(files)
    report.quarantine += duplicates
    serial = OneEmbedAtATime(embedder)
    progress = IngestProgress(len(files) + len(duplicates), on_progress)
    progress.skipped(len(duplicates))

    def run_batch(batch: list[DocumentPath]) -> BatchOutcome:
        counts = progress.batch(len(batch))
        options = {
            "max_tokens": max_tokens,
            "overlap_tokens": settings.doc_chunk_overlap_tokens,
            "cleanup": mode,
            "context": settings.doc_chunk_context,
            "label": batch[0].source if len(batch) == 1 else f"{batch[0].source} +{len(batch) - 1}",
        }
        if on_cluster and steps.submit_batch is not None:
            future = steps.submit_batch(batch, store, embedder, stored, **options)
            outcome = future.result()
            let_go(future)
        else:
            outcome = steps.batch(
                batch, store, serial.counting(progress, counts), stored, **options
            )
        progress.batch_done(counts)
        return outcome

    width = BATCHES_ON_A_CLUSTER if on_cluster else BATCHES_IN_FLIGHT
    for _, outcome in in_flight(run_batch, batched(files, DOCUMENTS_PER_BATCH), width):
        for name in (
            "added",
            "updated",
            "unchanged",
            "chunks_written",
            "chunks_deleted",
            "embeddings_computed",
            "embeddings_reused",
        ):
            setattr(report, name, getattr(report, name) + getattr(outcome, name))
        report.quarantine += outcome.quarantine
        report.skipped_documents += outcome.skipped
        report.warnings += outcome.warnings
        expected.update(outcome.expected)
        present.update(outcome.sources)
    if mode == "full":
        gone, chunks = steps.delete_missing(store, stored, present)
        report.deleted = len(gone)
        report.chunks_deleted += chunks
    steps.verify(store, expected, exact=mode != "none")
    report.collection_count = store.count()
    report.quarantined = len(report.quarantine)
    report.skipped = len(report.skipped_documents)
    path = write_quarantine(settings.quarantine_dir, run_id, report.quarantine)
    report.quarantine_path = str(path) if path else None
    report.duration_s = round(time.monotonic() - started, 3)
    return report
