"""Test set-up: no network beyond loopback, Prefect's test harness once per session."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures defined in tests/support: a real PostgreSQL for the session (`postgres_cluster`).
pytest_plugins = [
    "tests.support.postgres",
    "tests.support.browser",
    "tests.support.chroma_backends",
]

_RESULTS = tempfile.mkdtemp(prefix="gristmill-results-")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = _RESULTS
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PREFECT_API_URL"):
    os.environ.pop(_name, None)
for _name in [n for n in os.environ if n.startswith("GRISTMILL_")]:
    os.environ.pop(_name)
# Each command starts its own temporary Prefect server (or uses the test harness): no test
# leaves a background server behind unless it asks for one (tests/pipelines/test_server_reuse.py).
os.environ["GRISTMILL_SERVER"] = "ephemeral"

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise OSError(f"tests may not reach the network: {host}")
    _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _loopback_only  # type: ignore[method-assign]

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRANSCRIPTS = REPO / "data" / "transcripts"
MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes ~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session", autouse=True)
def _no_server_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Whatever a test did, stop every `gristmill server` recorded under this session's temp
    folders when the session ends."""
    yield
    from pipelines.server import running, stop

    for state in tmp_path_factory.getbasetemp().rglob("server.json"):
        found = running(state.parent)
        if found is not None and os.getpid() not in (found.pid, found.child):  # not a stand-in
            stop(state.parent)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """The CLI sets Prefect variables in os.environ for its run; undo them after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _prefect_db_template_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """tests/support/prefect_db.py makes its migrated database once for all xdist workers:
    under the run's temp root, which pytest-xdist's workers share (and pytest rotates)."""
    from tests.support.prefect_db import share_under

    base = tmp_path_factory.getbasetemp()
    share_under(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir for one test: no files but Prefect's database, migrated
    (tests/support/prefect_db.py; a first command on it starts its server in seconds)."""
    from tests.support.prefect_db import seed_prefect_database

    path = tmp_path / "data"
    path.mkdir()
    seed_prefect_database(path / "prefect")
    return path


@pytest.fixture
def local_model(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local embedding model's folder, set as GRISTMILL_MODEL_DIR; the test is skipped
    where it is not provisioned (`make setup` does it)."""
    from tasks.model_files import missing_files

    if missing_files(MODEL_DIR):
        pytest.skip("local model files not provisioned (python -m tasks.model_files DIR)")
    monkeypatch.setenv("GRISTMILL_MODEL_DIR", str(MODEL_DIR))
    return MODEL_DIR
