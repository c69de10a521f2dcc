"""Debian's headless Chromium for the tests that look at the Prefect UI as a user does."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture(scope="session")
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


@contextlib.contextmanager
def _profile() -> Iterator[str]:
    """A throwaway Chromium profile, removed afterwards: its last files may land a moment after
    the browser is killed (`Directory not empty` from one try, seen in CI), so try a few times."""
    profile = tempfile.mkdtemp(prefix="gristmill-chromium-")
    try:
        yield profile
    finally:
        for _ in range(20):
            shutil.rmtree(profile, ignore_errors=True)
            if not os.path.exists(profile):
                break
            time.sleep(0.1)


def evaluate_when_ready(
    chromium: str, url: str, expression: str, *, width: int, height: int = 1000, timeout: float = 60
) -> Any:
    """Load `url` in a `width` x `height` window and return the JSON value of the JavaScript
    `expression` once it is not null (the UI renders after its API calls). Speaks the DevTools
    protocol over its WebSocket (the `websockets` package comes with Prefect): --dump-dom gives
    no layout, and a column cut off at some width is a question of layout."""
    from websockets.sync.client import connect

    flags = [f for f in CHROMIUM_FLAGS if not f.startswith(("--window-size", "--virtual-time"))]
    with _profile() as profile:
        browser = subprocess.Popen(
            [
                chromium,
                *flags,
                f"--window-size={width},{height}",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderer and helpers go with it (killpg below)
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not port_file.is_file() or not port_file.read_text().strip():
                assert browser.poll() is None, f"chromium exited ({browser.returncode}) on {url}"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            pages: list[dict[str, Any]] = []
            while not pages:
                assert time.monotonic() < deadline, "chromium opened no page"
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as answer:
                    pages = [t for t in json.load(answer) if t.get("type") == "page"]
                time.sleep(0.1)
            with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as socket:
                for number in itertools.count(1):
                    socket.send(
                        json.dumps(
                            {
                                "id": number,
                                "method": "Runtime.evaluate",
                                "params": {"expression": expression, "returnByValue": True},
                            }
                        )
                    )
                    while (reply := json.loads(socket.recv(timeout=timeout))).get("id") != number:
                        pass  # events
                    value = reply.get("result", {}).get("result", {}).get("value")
                    if value is not None:
                        return value
                    assert time.monotonic() < deadline, f"{expression!r} stayed null on {url}"
                    time.sleep(0.25)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=30)
