"""End to end with real parts: a Prefect server, the `gristmill` process work pool, the
deployment from prefect.yaml, a worker process, and the UI in headless Chromium.

One module-scoped fixture starts the server, deploys, triggers a good run (two sample
transcripts) and a bad one (an empty transcript) and waits for both to finish; each test then
checks one thing through the REST API or the UI, in any order.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import REPO, SAMPLE_TRANSCRIPTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

POOL = "gristmill"
DEPLOYMENT = "summarize-transcripts/nightly"
REPORT_KEY = "summarize-transcripts-report"
SAMPLES = ("weekly-standup.txt", "customer-call.srt")
SCREENSHOTS = REPO / "docs" / "img"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1440,1000",
    # Virtual time, not wall time (a page takes ~2 s): at 15 s the runs list is still fading in.
    "--virtual-time-budget=40000",
)

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

    def get(self, path: str) -> Any:
        response = self.api.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.api.post(path, json=body)
        response.raise_for_status()
        return response.json()


@dataclass
class FinishedRuns:
    server: PrefectServer
    good: dict[str, Any]
    bad: dict[str, Any]
    bad_input: Path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port with a throwaway PREFECT_HOME."""
    root = tmp_path_factory.mktemp("prefect-server")
    logs = root / "logs"
    logs.mkdir()
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


@pytest.fixture(scope="module")
def finished_runs(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinishedRuns]:
    """Deploy from prefect.yaml, start a worker, run a good and a bad summarisation."""
    server = prefect_server
    data = tmp_path_factory.mktemp("data")
    (data / "transcripts").mkdir()
    for name in SAMPLES:
        shutil.copy(SAMPLE_TRANSCRIPTS / name, data / "transcripts" / name)
    bad_input = data / "incoming" / "empty.txt"
    bad_input.parent.mkdir()
    bad_input.write_text("")

    setup_log = server.logs / "setup.log"
    prefect_cli("work-pool", "create", POOL, "--type", "process", env=server.env, log=setup_log)
    prefect_cli("deploy", "--name", "nightly", env=server.env, log=setup_log)
    deployment = server.get(f"/deployments/name/{DEPLOYMENT}")
    assert deployment["work_pool_name"] == POOL
    assert "pipeline:summarize" in deployment["tags"]

    good = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})
    bad = server.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"paths": [str(bad_input)]}},
    )
    worker_env = {
        **server.env,
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_ENGINE": "offline",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    worker = start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "2"],
        worker_env,
        server.logs / "worker.log",
    )

    def finished() -> list[dict[str, Any]] | None:
        assert worker.poll() is None, f"the worker exited:\n{tail(server.logs / 'worker.log')}"
        runs = [server.get(f"/flow_runs/{run['id']}") for run in (good, bad)]
        return runs if all(r["state"]["type"] in TERMINAL for r in runs) else None

    try:
        good, bad = wait_for(
            "both flow runs", finished, 150, lambda: tail(server.logs / "worker.log", 80)
        )
        yield FinishedRuns(server=server, good=good, bad=bad, bad_input=bad_input)
    finally:
        stop(worker)


def test_summarize_run_completes_with_task_runs_and_report(finished_runs: FinishedRuns) -> None:
    server, run = finished_runs.server, finished_runs.good
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == "summarize transcripts"
    assert run["state"]["message"].startswith("2 transcripts: 2 summarised")

    task_runs = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    names = {t["name"] for t in task_runs}
    assert {t["state"]["type"] for t in task_runs} == {"COMPLETED"}
    for sample in SAMPLES:
        stem = Path(sample).stem
        assert any(stem in name and name.startswith("parse") for name in names), names
        assert f"write {stem}" in names, names

    artifacts = server.post("/artifacts/filter", {"artifacts": {"key": {"any_": [REPORT_KEY]}}})
    report = [a for a in artifacts if a["flow_run_id"] == run["id"]]
    assert len(report) == 1, artifacts
    assert report[0]["type"] == "markdown"
    assert all(Path(sample).stem in report[0]["data"] for sample in SAMPLES)


def test_empty_transcript_fails_with_its_reason_in_the_state(finished_runs: FinishedRuns) -> None:
    run = finished_runs.bad
    assert run["state"]["type"] == "FAILED", run["state"]
    assert run["name"] == "summarize empty.txt"
    message = run["state"]["message"]
    assert "1 failed" in message
    assert "empty.txt: file is empty" in message


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing and we are root; else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed (as root: apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    output = ""
    for steps in ([install], [["apt-get", "update", "-q"], install]):
        try:
            done = [
                subprocess.run(step, env=env, capture_output=True, text=True, timeout=600)
                for step in steps
            ]
        except subprocess.TimeoutExpired as exc:
            output = f"timed out: {exc}"
            continue
        output = done[-1].stdout[-2000:] + done[-1].stderr[-2000:]
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip(f"could not install chromium with apt-get: {output.strip()[-500:]}")


def browse(chromium: str, url: str, *flags: str) -> str:
    """Load `url` in headless Chromium with a throwaway profile; its stdout."""
    with tempfile.TemporaryDirectory(prefix="gristmill-chromium-") as profile:
        done = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, f"chromium failed on {url}:\n{done.stderr[-2000:]}"
    return done.stdout


def test_runs_page_shows_the_runs(finished_runs: FinishedRuns, chromium: str) -> None:
    """The dashboard lists both runs by name; screenshots for the README's 'Watching runs'."""
    server, good, bad = finished_runs.server, finished_runs.good, finished_runs.bad
    dom = browse(chromium, f"{server.url}/runs", "--dump-dom")
    assert good["name"] in dom, dom[-3000:]
    assert bad["name"] in dom
    screenshot(chromium, f"{server.url}/runs", "runs.png")
    screenshot(chromium, f"{server.url}/runs/flow-run/{good['id']}", "flow-run.png")


def test_failed_run_page_says_which_transcript_failed_and_why(
    finished_runs: FinishedRuns, chromium: str
) -> None:
    server, bad = finished_runs.server, finished_runs.bad
    page = f"{server.url}/runs/flow-run/{bad['id']}"
    dom = browse(chromium, page, "--dump-dom")
    assert "empty.txt: file is empty" in dom, dom[-3000:]
    screenshot(chromium, page, "failed-run.png")


def screenshot(chromium: str, url: str, name: str) -> None:
    """Save `url` as docs/img/`name` (linked from docs/watching-runs.md)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name
    target.unlink(missing_ok=True)
    browse(chromium, url, f"--screenshot={target}")
    assert target.stat().st_size > 10_000, f"{name} looks blank"
