"""Commands find the Prefect server that is up; with none, the first starts one in the
background that the next ones reuse, `gristmill server stop` ends and idleness stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines import server as local_server
from pipelines.environment import prepare_prefect
from tasks.settings import Settings
from tests.conftest import REPO

TRANSCRIPT = "Alice: We ship the release on Friday.\nBob: I will write the changelog.\n"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"true" if self.path == "/api/health" else b"{}"
        self.send_response(200 if self.path == "/api/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    """A stand-in that answers Prefect's health check, at http://127.0.0.1:PORT."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _record(home: Path, url: str, idle_minutes: float | None = None) -> None:
    """A server record naming a live process (this one: never stop it)."""
    home.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "child": os.getpid(), "url": url, "idle_minutes": idle_minutes}
    (home / local_server.STATE_FILE).write_text(json.dumps(record))


def test_a_healthy_gristmill_server_of_the_data_dir_is_used_without_an_export(
    data_dir: Path, health_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_API_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    _record(data_dir / "prefect", health_server)
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir, server="ephemeral"))  # type: ignore[call-arg]
    assert os.environ["PREFECT_API_URL"] == f"{health_server}/api"
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in os.environ  # no temporary server


def test_with_a_server_up_a_command_that_checks_does_not_import_gx_early(
    data_dir: Path, health_server: str
) -> None:
    """`prepare_prefect(checks=True)` imports great-expectations ahead only while it waits for
    a server to start; with one up, a cached re-run must not pay that import (issue 13's
    cached re-run figure). A fresh interpreter: this one may have imported it already."""
    _record(data_dir / "prefect", health_server)
    probe = (
        "import sys; from pipelines.environment import prepare_prefect; "
        "from tasks.settings import Settings; "
        f"prepare_prefect(Settings(_env_file=None, data_dir={str(data_dir)!r}, server='auto'), "
        "checks=True); import tasks.quality as q; "
        "print(q._preloading is None, 'great_expectations' in sys.modules)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=clean, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_an_exported_prefect_api_url_wins_and_nothing_is_started(
    data_dir: Path, health_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    _record(data_dir / "prefect", health_server)
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir, server="auto"))  # type: ignore[call-arg]
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    assert not (data_dir / "prefect" / local_server.LOG_FILE).exists()


def test_a_recorded_server_that_does_not_answer_is_not_used(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    _record(data_dir / "prefect", "http://127.0.0.1:9")  # nothing listens on port 9
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir, server="ephemeral"))  # type: ignore[call-arg]
    assert "PREFECT_API_URL" not in os.environ
    assert os.environ["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("prefect.db")


# A stand-in for `gristmill server --port N`: records itself like the real one, answers the
# health check after a moment, and counts how often it was started.
_FAKE_SERVER = """
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
home, port = sys.argv[1], int(sys.argv[-1])
with open(os.path.join(home, "starts"), "a") as f:
    f.write("x")
time.sleep(0.5)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "4"); self.end_headers()
        self.wfile.write(b"true")
    def log_message(self, *a):
        pass
httpd = HTTPServer(("127.0.0.1", port), H)
record = {"pid": os.getpid(), "child": os.getpid(), "url": f"http://127.0.0.1:{port}"}
with open(os.path.join(home, "server.json"), "w") as f:
    json.dump(record, f)
httpd.serve_forever()
"""


def test_commands_starting_at_once_share_one_server(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    home.mkdir()
    command = [sys.executable, "-c", _FAKE_SERVER, str(home), "--port"]
    results: list[tuple[local_server.RunningServer, bool]] = []
    spawned: list[int] = []  # on_start: where the command points Prefect while it waits
    try:
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    local_server.ensure(home, command, dict(os.environ), on_start=spawned.append)
                )
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 3
        assert (home / "starts").read_text() == "x"
        assert sorted(started for _, started in results) == [False, False, True]
        assert len({found.url for found, _ in results}) == 1
        urls = [local_server.server_url("127.0.0.1", port) for port in spawned]
        assert urls == [results[0][0].url]
    finally:
        local_server.stop(home, timeout=5)
    assert local_server.running(home) is None


def test_a_server_that_cannot_start_is_one_error_naming_its_log(tmp_path: Path) -> None:
    from tasks.errors import ConfigurationError

    home = tmp_path / "prefect"
    command = [sys.executable, "-c", "import sys; print('no database here'); sys.exit(3)"]
    with pytest.raises(ConfigurationError) as caught:
        local_server.ensure(home, command, dict(os.environ))
    assert "no database here" in str(caught.value)
    assert str(home / local_server.LOG_FILE) in str(caught.value)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _gone(pid: int) -> bool:
    return not local_server.alive(pid)


@pytest.mark.slow
def test_first_command_starts_a_kept_server_next_ones_reuse_it_and_it_stops(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "transcripts").mkdir(parents=True)
    (data / "transcripts" / "standup.txt").write_text(TRANSCRIPT)
    home = data / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    env |= {
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_SERVER": "auto",
        # short enough to see it stop, long enough that a loaded CI machine's slow start-up of
        # a command (imports) is not taken for idleness
        "GRISTMILL_SERVER_IDLE_MINUTES": "0.5",
    }
    try:
        first, second = _cli("summarize", env=env), _cli("summarize", env=env)
        runs = [_finish(first), _finish(second)]
        log = home / local_server.LOG_FILE
        for code, _out, err in runs:
            assert code == 0, (
                err + "\n--- server log\n" + (log.read_text()[-3000:] if log.exists() else "")
            )
            assert "Traceback" not in err
        started = [err for _, _, err in runs if "started a Prefect server" in err]
        assert len(started) == 1, [err for _, _, err in runs]
        assert "`gristmill server stop` ends it" in started[0]
        found = local_server.find(home)
        assert found is not None and found.idle_minutes == 0.5
        assert all(f"Run history: {found.url}/runs" in out for _, out, _ in runs)

        code, out, err = _finish(_cli("summarize", env=env))
        assert code == 0 and "started a Prefect server" not in err
        assert local_server.running(home) == found

        code, out, _ = _finish(_cli("server", "stop", env=env))
        assert code == 0 and f"Stopped the Prefect server at {found.url}" in out
        assert _gone(found.pid) and _gone(found.child)

        code, _, err = _finish(_cli("summarize", env=env))
        assert code == 0 and "started a Prefect server" in err
        again = local_server.running(home)
        assert again is not None and again.pid != found.pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (_gone(again.pid) and _gone(again.child)):
            time.sleep(0.5)
        log = (home / local_server.LOG_FILE).read_text()
        assert _gone(again.pid) and _gone(again.child), log[-3000:]
        assert "idle for" in log
        assert local_server.running(home) is None
    finally:
        local_server.stop(home, timeout=10)


def test_a_server_kept_between_commands_holds_no_secrets() -> None:
    from pipelines.server import server_env

    env = {
        "OPENAI_API_KEY": "sk-secret",
        "GRISTMILL_CHROMA_TOKEN": "t0ken",
        "GRISTMILL_OPENAI_API_KEY": "sk-2",
        "AWS_SECRET_ACCESS_KEY": "x",
        "DB_PASSWORD": "p",
        "PREFECT_SERVER_API_AUTH_STRING": "admin:pass",
        "PREFECT_HOME": "/tmp/home",
        "PATH": "/usr/bin",
    }
    assert server_env(env) == {
        "PREFECT_SERVER_API_AUTH_STRING": "admin:pass",
        "PREFECT_HOME": "/tmp/home",
        "PATH": "/usr/bin",
    }
