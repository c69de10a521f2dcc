"""The promise of a schedule, kept, on a real Prefect server (SQLite or PostgreSQL): the
server's scheduler creates runs of two deployments with a 15 s interval; `gristmill serve` runs
one, a process worker on a work pool the other, each to Completed."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import SAMPLE_TRANSCRIPTS
from tests.support.browser import browse
from tests.support.prefect_server import (
    PrefectServer,
    completed_scheduled_run,
    prefect_cli,
    start,
    stop,
    tail,
    wait_for,
)

SERVED = "summarize-transcripts/nightly"
SCHEDULED_POOL = "scheduled"
WORKER_SCHEDULED = "summarize-transcripts/every-15s"


@contextmanager
def scheduled_runs_completed(
    server: PrefectServer, data: Path, model_dir: Path
) -> Iterator[dict[str, dict[str, Any]]]:
    """{"worker": run, "serve": run}: one scheduled run of each deployment, Completed. Takes
    over the nightly deployment (an existing one is deleted first)."""
    (data / "transcripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_TRANSCRIPTS / "weekly-standup.txt", data / "transcripts")
    env = {
        **server.env,
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_MODEL_DIR": str(model_dir),
        "GRISTMILL_ENGINE": "offline",
    }
    log = server.logs / "scheduled.log"
    prefect_cli("work-pool", "create", SCHEDULED_POOL, "--type", "process", env=env, log=log)
    prefect_cli(
        "deploy",
        "pipelines/summarize.py:summarize_transcripts",
        *("--name", WORKER_SCHEDULED.split("/")[1], "--pool", SCHEDULED_POOL),
        *("--interval", "15"),
        env=env,
        log=log,
    )
    found = server.request("GET", f"/deployments/name/{SERVED}")
    if found.status_code == 200:
        server.request("DELETE", f"/deployments/{found.json()['id']}").raise_for_status()
    worker = start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", SCHEDULED_POOL],
        {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"},
        server.logs / "scheduled-worker.log",
    )
    serve_env = {
        **env,
        "GRISTMILL_SUMMARIZE_SCHEDULE": "every 15s",
        "GRISTMILL_INGEST_SCHEDULE": "none",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    serving = start(
        [sys.executable, "-m", "pipelines.cli", "serve"], serve_env, server.logs / "serve-2.log"
    )

    def scheduled_and_completed(name: str) -> dict[str, Any] | None:
        for process, log_name in ((worker, "scheduled-worker.log"), (serving, "serve-2.log")):
            assert process.poll() is None, f"{log_name} exited:\n{tail(server.logs / log_name)}"
        return completed_scheduled_run(server, name)

    def why() -> str:
        return "\n".join(
            f"--- {name}\n{tail(server.logs / name)}"
            for name in ("server.log", "scheduled-worker.log", "serve-2.log")
        )

    try:
        yield {
            "worker": wait_for(
                "a scheduled run picked up by the worker",
                lambda: scheduled_and_completed(WORKER_SCHEDULED),
                240,
                why,
            ),
            "serve": wait_for(
                "a scheduled run picked up by gristmill serve",
                lambda: scheduled_and_completed(SERVED),
                240,
                why,
            ),
        }
    finally:
        stop(serving)
        stop(worker)


def check_scheduled_runs_completed(runs: dict[str, dict[str, Any]]) -> None:
    """Each run was created by the server's scheduler and summarised its transcript."""
    for run in runs.values():
        assert run["auto_scheduled"] is True
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["state"]["message"].startswith("1 transcripts: "), run["state"]


def check_runs_page_shows(chromium: str, server_url: str, runs: dict[str, dict[str, Any]]) -> None:
    """The UI's Runs page lists the worker's deployment, and each run's page shows it Completed."""
    dom = browse(chromium, f"{server_url}/runs", "--dump-dom")
    assert WORKER_SCHEDULED.split("/")[1] in dom, dom[-3000:]
    for run in runs.values():
        page = browse(chromium, f"{server_url}/runs/flow-run/{run['id']}", "--dump-dom")
        assert "Completed" in page and run["name"] in page, page[-3000:]
