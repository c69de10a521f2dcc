"""Setting a batch run up: the engine for a job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.batch.engines.batch_api import BatchAPIEngine
from tasks.batch.engines.chat import ChatRowEngine
from tasks.batch.engines.offline import OfflineRowEngine
from tasks.batch.engines.protocol import RowEngine
from tasks.batch.job import RecordJob
from tasks.errors import UsageError

if TYPE_CHECKING:
    from tasks.embeddings import Embedder
    from tasks.settings import Settings


def build_row_engine(
    settings: Settings,
    job: RecordJob,
    mode: str = "online",
    *,
    embedder: Embedder | None = None,
    poll_interval_s: float = 10.0,
) -> RowEngine:
    """The engine for a job: offline for built-in tasks, else the online or Batch API path."""
    if mode not in ("online", "batch-api"):
        raise UsageError(f"--mode must be online or batch-api, not {mode!r}")
    if job.task is not None:
        if mode == "batch-api":
            raise UsageError("--mode batch-api applies to --template, not to built-in tasks")
        if job.task != "summarize" and embedder is None:
            from tasks.embeddings import build_embedder

            embedder = build_embedder(settings)
        return OfflineRowEngine(job, embedder)
    if mode == "batch-api":
        return BatchAPIEngine.from_settings(settings, job, poll_interval_s=poll_interval_s)
    return ChatRowEngine.from_settings(settings, job)
