"""The steps `ingest_files` calls, as plain functions or as the flow's Prefect tasks (one
task run per document batch, retried when the Chroma server went away)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.chroma_client import server_errors
from tasks.errors import StoreUnavailableError
from tasks.ingestion.batch import BatchOutcome, ingest_batch_plain
from tasks.ingestion.store import delete_missing_sources, raise_for_problems, verify_sources
from tasks.vectorstore import ChunkStore

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect.states import State


R = TypeVar("R")


# Waits before each retry of a document batch whose Chroma server went away (a restart takes
# a few seconds); after the last, the run stops and says so, keeping what it wrote.
STORE_RETRY_DELAYS_S: list[float] = [2, 10]


def store_lost(task: object, task_run: object, state: State[Any]) -> bool:
    """Prefect retry condition: retry a batch only when the Chroma server went away.

    Writes are idempotent upserts of deterministic ids, so a batch that is run again converges.
    """
    try:
        state.result()
    except StoreUnavailableError:
        return True
    except Exception:
        return False
    return False


def _naming_server_errors(fn: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        with server_errors():
            return fn(*args, **kwargs)

    return run


ingest_batch = task(
    name="ingest_batch",
    task_run_name="ingest {label}",
    cache_policy=NO_CACHE,
    retries=len(STORE_RETRY_DELAYS_S),
    retry_delay_seconds=STORE_RETRY_DELAYS_S,
    retry_condition_fn=store_lost,
)(_naming_server_errors(ingest_batch_plain))


@task(task_run_name="delete missing sources", cache_policy=NO_CACHE)
def delete_missing(
    store: ChunkStore, stored: dict[str, str], present: set[str]
) -> tuple[list[str], int]:
    """Delete sources that are no longer present (full cleanup)."""
    with server_errors():
        return delete_missing_sources(store, stored, present)


@task(task_run_name="verify collection", cache_policy=NO_CACHE)
def verify_collection(store: ChunkStore, expected: dict[str, set[str]], exact: bool) -> None:
    """Fail unless the collection holds the expected ids of every touched source."""
    with server_errors():
        problems = verify_sources(store, expected, exact=exact)
    raise_for_problems(problems)


class IngestSteps(NamedTuple):
    """The step functions `ingest_files` calls: plain ones, or the flow's Prefect tasks; with
    tasks, `submit_batch` hands a document batch to the flow's task runner (a Dask cluster)."""

    batch: Callable[..., BatchOutcome]
    delete_missing: Callable[..., tuple[list[str], int]]
    verify: Callable[..., None]
    submit_batch: Callable[..., PrefectFuture[BatchOutcome]] | None = None


def _verify_plain(store: ChunkStore, expected: dict[str, set[str]], exact: bool) -> None:
    raise_for_problems(verify_sources(store, expected, exact=exact))


PLAIN_STEPS = IngestSteps(ingest_batch_plain, delete_missing_sources, _verify_plain)
TASK_STEPS = IngestSteps(ingest_batch, delete_missing, verify_collection, ingest_batch.submit)
