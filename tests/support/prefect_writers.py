"""Several writers on one Prefect server at once, and what the server made of them: each writer
is a `tests.support.many_task_runs` process (one flow run with N task runs); afterwards the task
runs the server recorded are counted through its REST API and its log is searched for the
errors it answered with (503 "retry later", 500)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
# With PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true the server logs each 503 it answers with the
# first line; every 500 gets the second.
RETRYABLE = "Encountered retryable exception in request"
INTERNAL = "Encountered exception in request"


@dataclass
class Writers:
    flow_runs: list[dict[str, Any]]  # each writer's JSON line: flow_run_id, state, seconds
    seconds: float  # first writer started -> last writer done
    exit_codes: list[int]
    logs: list[Path]


def run_writers(
    env: dict[str, str], writers: int, task_runs: int, logs: Path, timeout: float = 600
) -> Writers:
    """Start `writers` flow runs of `task_runs` task runs each at the same time; wait for all."""
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tests.support.many_task_runs", str(task_runs)]
    paths = [logs / f"writer-{i}.log" for i in range(writers)]
    outputs = [logs / f"writer-{i}.out" for i in range(writers)]
    started = time.monotonic()
    processes = []
    for out, err in zip(outputs, paths, strict=True):
        with out.open("wb") as stdout, err.open("wb") as stderr:
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
            )
    codes = [process.wait(timeout=timeout) for process in processes]
    seconds = time.monotonic() - started
    runs = []
    for out in outputs:
        lines = out.read_text().strip().splitlines()
        runs.append(json.loads(lines[-1]) if lines else {})
    return Writers(runs, seconds, codes, paths)


def count_task_runs(api: httpx.Client, flow_run_ids: list[str], state: str | None = None) -> int:
    """Task runs of these flow runs the server has recorded (in `state`, if given)."""
    body: dict[str, Any] = {"flow_runs": {"id": {"any_": flow_run_ids}}}
    if state is not None:
        body["task_runs"] = {"state": {"type": {"any_": [state]}}}
    response = api.post("/task_runs/count", json=body)
    response.raise_for_status()
    return int(response.json())


def wait_recorded(
    api: httpx.Client, flow_run_ids: list[str], expected: int, timeout: float
) -> tuple[int, float]:
    """Poll until `expected` COMPLETED task runs are recorded or `timeout` passes; the count
    and the seconds it took (the server records task runs from events, after the flows end)."""
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):  # a busy server: ask again
            count = count_task_runs(api, flow_run_ids, "COMPLETED")
        if count >= expected:
            break
        time.sleep(0.5)
    return count, time.monotonic() - started


def server_errors(log: Path) -> dict[str, int]:
    """What the server's log says: the 503s (retryable) and 500s it answered with, and its
    ERROR lines of any kind (a service that failed to write counts there too)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = sum(1 for line in text.splitlines() if "| ERROR" in line)
    return {"503": text.count(RETRYABLE), "500": text.count(INTERNAL), "error lines": errors}
