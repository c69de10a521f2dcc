"""`gristmill server` stops when told: `kill <pid>` or `gristmill server stop` frees the port,
the Prefect child goes with it, and a second server on the same data folder is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.server import alive
from tests.conftest import REPO
from tests.support.chroma_process import free_port
from tests.support.prefect_db import seed_prefect_database
from tests.support.prefect_server import clean_env

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Free for a new server: nothing listens there. SO_REUSEADDR as servers (uvicorn) set it,
    so connections of the stopped server left in TIME_WAIT do not count (seen on a loaded run)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def until(what: str, check: object, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.3)
    pytest.fail(f"not {what} within {seconds:.0f} s; server log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    seed_prefect_database(tmp_path / "data" / "prefect")
    return {**clean_env(), "GRISTMILL_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def started(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "server", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        until("answering /api/health", lambda: healthy(port), 120, log)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        state = Path(env["GRISTMILL_DATA_DIR"]) / "prefect" / "server.json"
        if state.is_file():  # never leave a Prefect server behind, whatever failed
            child = json.loads(state.read_text())["child"]
            if alive(child):
                os.kill(child, signal.SIGKILL)


def test_kill_of_gristmill_server_stops_its_prefect_child_and_frees_the_port(
    started: tuple[subprocess.Popen[str], int], env: dict[str, str], tmp_path: Path
) -> None:
    process, port = started
    state = Path(env["GRISTMILL_DATA_DIR"]) / "prefect" / "server.json"
    child = json.loads(state.read_text())["child"]
    assert child != process.pid

    second = cli("server", "--port", str(free_port()), env=env)
    assert second.returncode == 2
    assert "already serves" in second.stderr and "gristmill server stop" in second.stderr
    assert "Traceback" not in second.stderr

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    until("port free", lambda: port_free(port), 10, tmp_path / "server.log")
    assert not alive(child)
    assert not state.exists()


def test_gristmill_server_stop_stops_it_from_another_shell(
    started: tuple[subprocess.Popen[str], int], env: dict[str, str], tmp_path: Path
) -> None:
    process, port = started
    stopped = cli("server", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"Stopped the Prefect server at http://127.0.0.1:{port}" in stopped.stdout
    assert process.wait(timeout=10) == 0
    assert not healthy(port)
    until("port free", lambda: port_free(port), 10, tmp_path / "server.log")

    again = cli("server", "stop", env=env)
    assert again.returncode == 0
    assert "No gristmill server is running" in again.stdout
