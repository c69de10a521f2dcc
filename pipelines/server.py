"""`gristmill server`: a local Prefect server that stops when told.

`gristmill server` runs `prefect server start` as a child process and records itself in
`<prefect home>/server.json` (its pid, the child's pid and the URL). SIGTERM, SIGINT or SIGHUP
to it are passed on to the child, which it then waits for, so `kill <pid>` frees the port;
`gristmill server stop` does that from another shell. On Linux the child is also told to stop
if the parent dies without a word (SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

STATE_FILE = "server.json"
STOP_TIMEOUT_SECONDS = 30.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class RunningServer:
    pid: int
    child: int
    url: str


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process holds the pid: alive, not ours
        return True
    return True


def running(home: Path) -> RunningServer | None:
    """The server recorded in `home`, if its process still lives (a stale record is removed)."""
    state = home / STATE_FILE
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
        found = RunningServer(int(data["pid"]), int(data["child"]), str(data["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if alive(found.pid) or alive(found.child):
        return found
    state.unlink(missing_ok=True)
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when `gristmill server` dies, even by SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run(command: list[str], env: dict[str, str], home: Path, url: str) -> int:
    """Run the Prefect server in the foreground until it exits or we are told to stop."""
    process = subprocess.Popen(
        command, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
    )
    state = home / STATE_FILE
    state.write_text(
        json.dumps({"pid": os.getpid(), "child": process.pid, "url": url}), encoding="utf-8"
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM whatever arrived: uvicorn stops gracefully on it, where a second SIGINT
        # (Ctrl-C reaches the child from the terminal too) would make it quit abruptly.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        return _wait(process)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        state.unlink(missing_ok=True)


def _wait(process: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # a handler was not yet installed; keep waiting for the child
            continue


def stop(home: Path, timeout: float = STOP_TIMEOUT_SECONDS) -> RunningServer | None:
    """Stop the server recorded in `home` and wait for its processes; None if none ran."""
    found = running(home)
    if found is None:
        return None
    for pid in (found.pid, found.child):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (alive(found.pid) or alive(found.child)):
        time.sleep(0.1)
    for pid in (found.child, found.pid):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    (home / STATE_FILE).unlink(missing_ok=True)
    return found
