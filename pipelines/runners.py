"""Where a flow's tasks run: a thread pool in the flow's process, or a Dask cluster.

`GRISTMILL_TASK_RUNNER=thread` (the default) is Prefect's `ThreadPoolTaskRunner`;
`GRISTMILL_TASK_RUNNER=dask` is prefect-dask's `DaskTaskRunner`, on the cluster whose scheduler
is `GRISTMILL_DASK_ADDRESS` (`tcp://host:8786`) or, without one, on a `LocalCluster` of worker
processes started for the run. dask is imported only when it is asked for.

On Dask a task's arguments are pickled and run in another process: the engines travel as their
settings and are built again there (`tasks/portable.py`), and what they share (the LLM result
cache, the batch journal, rate limits) lives on storage every worker sees or on the Prefect
server. docs/deployment.md ("A Dask cluster") says what that asks of the machines.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tasks.errors import ConfigurationError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

    from tasks.settings import Settings

CONNECT_TIMEOUT_S = 10.0


def task_runner_for(settings: Settings, default_workers: int) -> TaskRunner[Any]:
    """The task runner the settings ask for; `default_workers` sizes the thread pool (and the
    threads of each LocalCluster worker)."""
    if settings.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=default_workers)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "processes": True,
            "threads_per_worker": max(1, default_workers),
            "dashboard_address": None,
        }
    )


def check_task_runner(settings: Settings) -> None:
    """Raise a `ConfigurationError` in words when the runner asked for cannot work: a Dask
    scheduler that does not answer, or no Prefect server for the workers to report to. Called
    by the CLI before a flow run starts (a thread runner needs nothing)."""
    if settings.task_runner != "dask":
        return
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigurationError(
            "GRISTMILL_TASK_RUNNER=dask needs a Prefect server that every Dask worker reports to, "
            "and this command has none (GRISTMILL_SERVER=ephemeral)",
            hint="start one with `gristmill server` or set PREFECT_API_URL",
        )
    if not settings.dask_address:
        return
    from distributed import Client
    from distributed.comm import parse_address

    address = settings.dask_address
    try:
        parse_address(address, strict=False)
        with Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False) as client:
            workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigurationError(
            f"cannot reach the Dask scheduler at GRISTMILL_DASK_ADDRESS={address!r}: {reason}",
            hint="start one with `dask scheduler` and workers with `dask worker tcp://HOST:8786`, "
            "or unset GRISTMILL_DASK_ADDRESS for a LocalCluster",
        ) from None
    if workers == 0:
        raise ConfigurationError(
            f"the Dask scheduler at {address} has no workers",
            hint="start some with `dask worker " + address + "`",
        )


def check_cluster_store(settings: Settings) -> None:
    """Ingest on a Dask cluster writes from its workers' processes: a Chroma server's job, not
    an on-disk store's (one writer, one machine). A `ConfigurationError` in words otherwise."""
    if settings.task_runner == "dask":
        from tasks.chroma_client import require_chroma_server

        require_chroma_server(settings, "ingest on a Dask cluster writes from its workers")
