"""`gristmill server`: a local Prefect server that stops when told, and that every command finds.

`gristmill server` runs `prefect server start` as a child process and records itself in
`<prefect home>/server.json` (its pid, the child's pid and the URL). SIGTERM, SIGINT or SIGHUP
to it are passed on to the child, which it then waits for, so `kill <pid>` frees the port;
`gristmill server stop` does that from another shell. On Linux the child is also told to stop
if the parent dies without a word (SIGKILL).

Commands find a healthy recorded server and report to it (`find`). With none up, `ensure`
starts one in the background (its own session, log in `<prefect home>/server.log`) under a
file lock, so two commands starting at once share one server. A server started that way
stops itself after `idle_minutes` without a gristmill command (each touches
`server.used` while it lives) and without a flow run in a RUNNING, PENDING or CANCELLING state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tasks.errors import ConfigurationError

STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
USED_FILE = "server.used"
STOP_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 180.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
BUSY_STATES = ("RUNNING", "PENDING", "CANCELLING")


@dataclass(frozen=True)
class RunningServer:
    pid: int
    child: int
    url: str
    idle_minutes: float | None = None
    database: str | None = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


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
        idle = data.get("idle_minutes")
        found = RunningServer(
            int(data["pid"]),
            int(data["child"]),
            str(data["url"]),
            float(idle) if idle is not None else None,
            str(data["database"]) if data.get("database") else None,
        )
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


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def server_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without the secrets a Prefect server never needs (LLM keys, the Chroma token, ...):
    a server kept running between commands must not hold them. Prefect's own settings stay."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith("PREFECT_") or not _SECRET_NAME.search(name)
    }


def check_port(host: str, port: int) -> None:
    """Raise ConfigurationError when nothing could listen on `host`:`port` now."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port} ({exc.strerror})", hint="pick another with --port"
            ) from None


def foreground_env(env: dict[str, str], home: Path, url: str) -> dict[str, str]:
    """The environment of a Prefect server keeping its database in `home`, reached at `url`."""
    return {
        **env,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": env.get("DO_NOT_TRACK", "1"),
        # The UI asks this address for data; Prefect defaults it to port 4200 whatever --port says.
        "PREFECT_UI_API_URL": env.get("PREFECT_UI_API_URL") or f"{url}/api",
    }


def run(
    command: list[str],
    env: dict[str, str],
    home: Path,
    url: str,
    idle_minutes: float | None = None,
    database: str | None = None,
) -> int:
    """Run the Prefect server in the foreground until it exits or we are told to stop; with
    `idle_minutes`, also until it has been idle that long. `database` (in words, no password)
    is recorded for `gristmill doctor`."""
    process = subprocess.Popen(
        command,
        env=server_env(env),
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    state = home / STATE_FILE
    record = {
        "pid": os.getpid(),
        "child": process.pid,
        "url": url,
        "idle_minutes": idle_minutes,
        "database": database,
    }
    state.write_text(json.dumps(record), encoding="utf-8")

    def forward(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM whatever arrived: uvicorn stops gracefully on it, where a second SIGINT
        # (Ctrl-C reaches the child from the terminal too) would make it quit abruptly.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        if idle_minutes is not None:
            _wait_until_idle(process, home, url, idle_minutes * 60)
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


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect server at `url` (without /api) answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as reply:
            return bool(reply.status == 200 and json.loads(reply.read() or b"false") is True)
    except (OSError, ValueError):
        return False


def find(home: Path) -> RunningServer | None:
    """The server recorded in `home` if it is up and answers its health check."""
    found = running(home)
    return found if found is not None and healthy(found.url) else None


def mark_used(home: Path) -> None:
    """Restart the idle clock of the server in `home` (a server started by `ensure`)."""
    with contextlib.suppress(OSError):
        (home / USED_FILE).touch()


def keep_alive(home: Path, idle_minutes: float) -> None:
    """Mark the server used now and, from a daemon thread, for as long as this process lives
    (a long `serve` or batch keeps its server)."""
    mark_used(home)
    interval = max(0.5, min(60.0, idle_minutes * 60 / 4))

    def beat() -> None:
        while True:
            time.sleep(interval)
            mark_used(home)

    threading.Thread(target=beat, name="gristmill-server-keep-alive", daemon=True).start()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """An exclusive lock on the data dir's server record, across processes."""
    with (home / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port(preferred: int = 4200) -> int:
    """`preferred` when nothing listens there (the UI link users know), else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ConfigurationError("no free port on 127.0.0.1 for a Prefect server")


def server_url(host: str, port: int) -> str:
    """The URL `gristmill server --host HOST --port PORT` records and prints (a server on every
    interface is reached on loopback); its default host is 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def ensure(
    home: Path,
    command: list[str],
    env: dict[str, str],
    timeout: float = START_TIMEOUT_SECONDS,
    on_start: Callable[[int], None] | None = None,
) -> tuple[RunningServer, bool]:
    """The healthy server recorded in `home`, started in the background when there is none:
    `command + ["--port", N]` runs it. Returns it and whether this call started it. Holds the
    data dir's lock meanwhile, so concurrent callers wait for one server instead of each
    starting their own. `on_start(N)` is called once the server process is spawned, before it
    is healthy (seconds of this process's idle time)."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / LOG_FILE
    with _locked(home):
        process: subprocess.Popen[bytes] | None = None
        deadline = time.monotonic() + timeout
        while True:
            found = running(home)
            if found is not None and healthy(found.url):
                return found, process is not None
            if found is None and process is None:
                port = _free_port()
                with log_path.open("ab") as log:
                    process = subprocess.Popen(
                        [*command, "--port", str(port)],
                        env=server_env(env),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # not stopped by the terminal's Ctrl-C
                    )
                if on_start is not None:
                    on_start(port)
            if process is not None and process.poll() is not None:
                raise ConfigurationError(
                    f"the local Prefect server did not start: {_tail(log_path)}",
                    hint=f"see {log_path}, or set GRISTMILL_SERVER=ephemeral",
                )
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the local Prefect server was not healthy within {timeout:.0f} s",
                    hint=f"see {log_path}; `gristmill server stop` ends it",
                )
            time.sleep(0.2)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no log"


def _busy(url: str) -> bool:
    """Whether the server has a flow run in flight (an unanswered question counts as busy)."""
    body = {"flow_runs": {"state": {"type": {"any_": list(BUSY_STATES)}}}}
    request = urllib.request.Request(
        f"{url}/api/flow_runs/count",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bool(int(json.loads(reply.read())) > 0)
    except (OSError, ValueError):
        return True


def _wait_until_idle(
    process: subprocess.Popen[bytes], home: Path, url: str, idle_seconds: float
) -> None:
    """Return once the child exits or has been idle `idle_seconds`; then ask it to stop."""
    mark_used(home)
    poll = max(0.2, min(30.0, idle_seconds / 4))
    while True:
        try:
            process.wait(timeout=poll)
            return
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            continue
        try:
            quiet = time.time() - (home / USED_FILE).stat().st_mtime
        except OSError:
            quiet = idle_seconds
        if quiet < idle_seconds:
            continue
        if _busy(url):
            mark_used(home)
            continue
        print(f"idle for {quiet / 60:.1f} minutes: stopping", file=sys.stderr, flush=True)
        process.send_signal(signal.SIGTERM)
        return
