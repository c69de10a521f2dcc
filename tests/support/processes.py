"""Real processes for end-to-end tests: a Prefect server on a free loopback port, workers and
CLI commands in their own process groups, and polling with a reason when it times out."""

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

from tests.conftest import REPO

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
                time.sleep(0.5)
                return None
            return response

        return wait_for(f"{method} {path}", answer, 150, lambda: tail(self.logs / "server.log"))

    def get(self, path: str) -> Any:
        return self.request("GET", path).raise_for_status().json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body).raise_for_status().json()


@contextlib.contextmanager
def prefect_server_process(root: Path, **extra_env: str) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port with a throwaway PREFECT_HOME under
    `root`, its log in `root/logs/server.log`; `extra_env` sets server settings."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))},
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

    def healthy() -> bool | None:
        assert server.poll() is None, f"the server exited:\n{tail(logs / 'server.log')}"
        try:
            return api.get("/health").status_code == 200 or None
        except httpx.TransportError:
            return None

    try:
        wait_for("server health", healthy, 120, lambda: tail(logs / "server.log"))
        yield PrefectServer(
            url=url, env={**env, "PREFECT_API_URL": f"{url}/api"}, logs=logs, api=api
        )
    finally:
        api.close()
        stop(server)
