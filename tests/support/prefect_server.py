"""Helpers for end-to-end tests against a real Prefect server in another process: poll with a
deadline, run the `prefect` CLI, start and stop process groups, ask the REST API (again while
it answers 503), and find a run the server's scheduler created that ran to Completed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.prefect_db import seed_prefect_database

REPO = Path(__file__).resolve().parents[2]

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The scheduler looks for deployments to schedule every 2 s, not every 60 s, and schedules a
# few runs ahead, not 100 (a 15 s interval would fill an hour: 100 inserts per deployment into
# SQLite while the flows run, which timed out requests in CI).
FAST_SCHEDULER = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT60S",
}


def clean_env() -> dict[str, str]:
    """This process's environment without Prefect's or gristmill's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}


def user_env(data_dir: Path, **values: str) -> dict[str, str]:
    """The environment of a user's `gristmill` command: none of this process's settings, the
    data dir given, a temporary Prefect server of the command's own, then `values`."""
    return {
        **clean_env(),
        "GRISTMILL_DATA_DIR": str(data_dir),
        "GRISTMILL_SERVER": "ephemeral",
        **values,
    }


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, why: Callable[[], str]) -> T:
    """Poll `check` until it returns a value; fail with `why()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not done after {timeout:.0f} s\n{why()}")
        time.sleep(0.25)


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_cli(*args: str, env: dict[str, str], log: Path, timeout: float = 120) -> None:
    """Run the `prefect` CLI of this interpreter from the repo root; fail with its output."""
    with log.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{tail(log)}"


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A background process in its own process group, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class PrefectServer:
    url: str
    env: dict[str, str]
    logs: Path
    api: httpx.Client
    busy_answers: int = 0  # 503s this client was given (and asked again after)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The server's answer, asking again while it says 503: the SQLite database behind a
        test server is briefly busy while runs finish or schedules are written (seen in CI)."""

        def answer() -> httpx.Response | None:
            try:
                response = self.api.request(method, path, **kwargs)
            except httpx.TimeoutException:
                # the same busy database on a loaded 2-core CI machine: ask again (seen in CI)
                return None
            if response.status_code == 503:
                self.busy_answers += 1
                time.sleep(0.5)
                return None
            return response

        return wait_for(f"{method} {path}", answer, 150, lambda: tail(self.logs / "server.log"))

    def get(self, path: str) -> Any:
        return self.request("GET", path).raise_for_status().json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body).raise_for_status().json()


def completed_scheduled_run(server: PrefectServer, deployment: str) -> dict[str, Any] | None:
    """A run of `deployment` the server's scheduler created that reached Completed; None while
    there is none. Fails at once when one of its runs ended otherwise."""
    found = server.request("GET", f"/deployments/name/{deployment}")
    if found.status_code != 200:
        return None
    runs = server.post(
        "/flow_runs/filter",
        {
            "flow_runs": {
                "deployment_id": {"any_": [found.json()["id"]]},
                "state": {"type": {"any_": sorted(TERMINAL)}},
            },
            "limit": 20,
        },
    )
    done = [r for r in runs if r["auto_scheduled"] and r["state"]["type"] == "COMPLETED"]
    failed = [r for r in runs if r["state"]["type"] in TERMINAL - {"COMPLETED"}]
    assert not failed, failed[0]["state"]
    return dict(done[0]) if done else None


@contextlib.contextmanager
def gristmill_server(
    url: str | None, root: Path, name: str, *extra: str
) -> Iterator[PrefectServer]:
    """`gristmill server` (on database `url`, else SQLite in its data dir) with its own data
    dir under `root`, a fast scheduler and every 503 logged; once it is healthy, until the end
    of the `with` block."""
    logs = root / f"{name}-logs"
    logs.mkdir(parents=True)
    port = free_port()
    env = {
        **clean_env(),
        "GRISTMILL_DATA_DIR": str(root / f"{name}-data"),
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"),
        **FAST_SCHEDULER,
        # each 503 and 500 the server answers with is logged (tests.support.prefect_writers)
        "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
    }
    if url is None:
        seed_prefect_database(root / f"{name}-data" / "prefect")
    command = [sys.executable, "-m", "pipelines.cli", "server", "--port", str(port)]
    database = ["--database-url", url] if url else []
    process = start([*command, *database, *extra], env, logs / "server.log")
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=30)
    try:
        wait_healthy(process, api, logs / "server.log", 180)
        server_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        yield PrefectServer(f"http://127.0.0.1:{port}", server_env, logs, api)
    finally:
        api.close()
        stop(process)


def wait_healthy(
    process: subprocess.Popen[bytes], api: httpx.Client, log: Path, timeout: float
) -> None:
    """Poll the server's /health until it answers 200; fail with its log's tail when it exits
    or `timeout` seconds pass."""

    def healthy() -> bool | None:
        assert process.poll() is None, f"the server exited:\n{tail(log)}"
        try:
            return api.get("/health").status_code == 200 or None
        except httpx.TransportError:
            return None

    wait_for("server health", healthy, timeout, lambda: tail(log))


@contextlib.contextmanager
def prefect_server_process(root: Path, **extra_env: str) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port with a throwaway PREFECT_HOME under
    `root`, its log in `root/logs/server.log`; `extra_env` sets server settings."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seed_prefect_database(root / "home")
    env = {
        **clean_env(),
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"),
        # The UI asks this address for data; it defaults to port 4200 whatever --port says.
        "PREFECT_UI_API_URL": f"{url}/api",
        **extra_env,
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = start([*command, "--port", str(port)], env, logs / "server.log")
    api = httpx.Client(base_url=f"{url}/api", timeout=30)
    try:
        wait_healthy(server, api, logs / "server.log", 120)
        yield PrefectServer(
            url=url, env={**env, "PREFECT_API_URL": f"{url}/api"}, logs=logs, api=api
        )
    finally:
        api.close()
        stop(server)
