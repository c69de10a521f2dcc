"""What a flow run uses that is not a run parameter: settings, engine objects, a progress callback.

A flow's parameters are JSON only (what a deployment run, the UI's Run form and
`prefect deployment run` can give), so Prefect validates them. The in-process things a caller
wants a run to use instead of building its own (the CLI's settings and progress bar, a test's
fake engine) travel beside the call in a context variable:

    with run_context(settings=settings, embedder=embedder, on_progress=bar.update):
        state = ingest_documents(paths=[...], return_state=True)

The flow body reads `current_run()` and builds what is not set from the settings, as a run on
a worker does (nothing set there). A sync flow called in-process runs its body in the caller's
thread, and Prefect's `ThreadPoolTaskRunner` runs each task in a copy of the submitting
thread's context, so child flows (in-process shards) and tasks see the same values. Tasks on
Dask do not: flows resolve engines in their body and pass them to tasks as arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypedDict, Unpack

if TYPE_CHECKING:
    from tasks.batch.engines.protocol import RowEngine
    from tasks.embeddings import Embedder
    from tasks.llm import LLM
    from tasks.reporting import ProgressCallback
    from tasks.settings import Settings
    from tasks.summaries import Summarizer


@dataclass(frozen=True)
class RunContext:
    """The overrides for the flow runs started inside `run_context`; None means "build it from
    the settings" (for `settings`: read them from the environment)."""

    settings: Settings | None = None
    embedder: Embedder | None = None
    summarizer: Summarizer | None = None
    engine: RowEngine | None = None
    llm: LLM | None = None
    on_progress: ProgressCallback | None = None

    def run_settings(self) -> Settings:
        """The settings set here, else the environment's (a deployment run on a worker)."""
        from tasks.settings import Settings

        return self.settings or Settings()


class Overrides(TypedDict, total=False):
    """`run_context`'s keyword arguments: the `RunContext` fields, checked by mypy."""

    settings: Settings | None
    embedder: Embedder | None
    summarizer: Summarizer | None
    engine: RowEngine | None
    llm: LLM | None
    on_progress: ProgressCallback | None


NOTHING_SET = RunContext()
_CURRENT: ContextVar[RunContext | None] = ContextVar("gristmill_run_context", default=None)


def current_run() -> RunContext:
    """The overrides of the innermost `run_context` (all None outside one)."""
    return _CURRENT.get() or NOTHING_SET


@contextmanager
def run_context(**overrides: Unpack[Overrides]) -> Iterator[RunContext]:
    """Set `RunContext` fields (by name) for the flow runs started inside; the fields not given
    keep the enclosing context's values (None given sets None)."""
    context = replace(current_run(), **overrides)
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


@contextmanager
def heartbeats(wanted: bool) -> Iterator[None]:
    """Flow runs started inside send Prefect's heartbeats (its default) or, when not `wanted`,
    none. A run that only answers from stored hashes (a cached re-run: no task run, ~0.1 s)
    has nothing for a heartbeat to watch, and Prefect's heartbeat thread sleeps in whole seconds,
    so its end waits up to 1 s for that thread (0.85 s measured, a third of such a command's
    wall: benchmarks/cli_startup.py). Runs with work keep them: they are how a dead worker's run
    is marked Crashed (pipelines/shards.py)."""
    if wanted:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
