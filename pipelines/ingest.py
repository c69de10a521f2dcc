"""Flow `ingest_documents`: documents in, an up-to-date Chroma collection out.

discover -> per batch of documents: load + check, chunk + check, plan against the store, embed
(stored vectors reused by content hash), upsert, delete stale ids -> full cleanup -> verify.
Documents that fail a check are quarantined with their reasons and the run goes on; documents
with nothing to index (empty, front matter only) are skipped, in words, and fail nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from tasks.chroma_client import open_chroma, server_errors, writer_lock
from tasks.documents import discover_documents
from tasks.embeddings import Embedder, build_embedder
from tasks.errors import GristmillError, RunFailed
from tasks.ingestion import (
    TASK_STEPS,
    IngestReport,
    check_cleanup,
    ingest_files,
    ingest_report_markdown,
)
from tasks.lexical import open_lexical
from tasks.reporting import RunProgress, tag_flow_run
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore

REPORT_ARTIFACT_KEY = "ingest-documents-report"
PROGRESS_ARTIFACT_KEY = "ingest-documents-progress"


def _run_name() -> str:
    params = flow_run.parameters
    paths = params.get("paths") or ["data/documents"]
    what = Path(paths[0]).name if len(paths) == 1 else f"{len(paths)} paths"
    return f"ingest {what}"


@flow(
    name="ingest-documents",
    flow_run_name=_run_name,
    description="Ingest documents into a Chroma collection, incrementally and checked.",
    validate_parameters=False,
)
def ingest_documents(
    paths: list[str] | None = None,
    collection: str | None = None,
    cleanup: str = "incremental",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    settings: Settings | None = None,
    embedder: Any = None,
    on_progress: Any = None,
) -> IngestReport | State:
    """Bring the collection in line with the documents under `paths`.

    `embedder` is an `Embedder` (typed Any: Prefect cannot build a parameter schema for a
    Protocol); `on_progress(done, total)` is called after each document batch.
    """
    try:
        return _ingest(
            paths, collection, cleanup, include, exclude, settings, embedder, on_progress
        )
    except GristmillError as exc:
        # Chroma unreachable, the writer lock held, another embedding model: a Failed state
        # with the reason, not a raised error whose traceback Prefect prints on the terminal
        # before the CLI's one line. Callers get the error back from the state; the UI shows
        # it as the state message (logged at INFO so the terminal does not print it twice).
        get_run_logger().info("stopped: %s", exc)
        return Failed(message=str(exc), data=exc)


def _ingest(
    paths: list[str] | None,
    collection: str | None,
    cleanup: str,
    include: list[str] | None,
    exclude: list[str] | None,
    settings: Settings | None,
    embedder: Any,
    on_progress: Any,
) -> IngestReport | State:

    logger = get_run_logger()
    settings = settings or Settings()
    mode = check_cleanup(cleanup)
    embedder = cast(Embedder, embedder or build_embedder(settings))
    inputs = [Path(p) for p in paths] if paths else [settings.documents_dir]
    files = discover_documents(inputs, include=include, exclude=exclude)
    name = collection or settings.collection
    logger.info("%d documents to ingest into %r (cleanup %s)", len(files), name, mode)
    report_progress = RunProgress(PROGRESS_ARTIFACT_KEY, "documents ingested (%)", on_progress)

    tag_flow_run("pipeline:ingest", f"collection:{name}", f"embedder:{embedder.name}")
    with writer_lock(settings), server_errors():
        store = ChunkStore(
            open_chroma(settings),
            name,
            embedder.name,
            embedder.dimension,
            lexical=open_lexical(settings, name),
        )
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
        )
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=ingest_report_markdown(report),
        description=report.headline(),
    )
    logger.info(report.headline())
    if report.quarantine:
        reasons = "; ".join(f"{r.source}: {r.reason}" for r in report.quarantine[:5])
        message = f"{report.headline()}. Quarantined: {reasons}"
        return Failed(message=message, data=RunFailed(message, report=report))
    return Completed(message=report.headline(), data=report)
