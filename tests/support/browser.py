"""Debian's headless Chromium for the tests that look at the Prefect UI as a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

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
