"""A Chroma server that is configured wrong: one clear error that says what is wrong, never a hang.

The store and ingestion scenarios run against a real `chroma run` too
(`@on_both_chroma_backends` in tests/tasks/test_vectorstore.py and
tests/tasks/ingestion/test_ingest.py); these are the ways GRISTMILL_CHROMA_HOST/PORT/SSL/TOKEN
can point somewhere wrong: at nothing, at something that never answers, at something that is
not Chroma, at a server that refuses the token, or at the right server spelled as a URL.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tasks.chroma_client
import tasks.ingestion.driver
from pipelines.run_context import run_context
from tasks.chroma_client import open_chroma
from tasks.embeddings import Vectors
from tasks.errors import ConfigurationError, StoreUnavailableError
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore
from tests.support.chroma_process import ChromaServer, chroma_server, free_port
from tests.support.embedders import HashEmbedder

REPO = Path(__file__).resolve().parents[2]


def settings_for(data_dir: Path, **values: Any) -> Settings:
    """Settings from defaults and `values` only (no .env file)."""
    return Settings(_env_file=None, data_dir=data_dir, **values)


@contextmanager
def http_answering(status: int, body: bytes) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A loopback HTTP server answering every request with `status` and `body`.

    Yields its port and the headers of each request it got.
    """
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    with chroma_server(tmp_path_factory.mktemp("chroma") / "db") as running:
        yield running


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_fails_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Accepts connections (the kernel's backlog) but never reads or answers, like a stopped
    # process: chromadb's own client, which has no timeout, would wait forever.
    monkeypatch.setattr(tasks.chroma_client, "HEARTBEAT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match=r"no answer within 0\.5 s"):
            open_chroma(settings_for(tmp_path, chroma_host="127.0.0.1", chroma_port=port))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, b"not found"), (200, b"<html>a web page</html>"), (200, b'{"ok": true}'), (200, b"42")],
    ids=["404", "web-page", "other-json", "a-number"],
)
def test_something_that_is_not_chroma_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, body: bytes
) -> None:
    from pipelines.cli import app

    with http_answering(status, body) as (port, seen):
        monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("GRISTMILL_MODEL_DIR", str(REPO / "data/models/all-MiniLM-L6-v2"))
        monkeypatch.setenv("GRISTMILL_CHROMA_HOST", "127.0.0.1")
        monkeypatch.setenv("GRISTMILL_CHROMA_PORT", str(port))
        result = CliRunner().invoke(app, ["query", "travel policy"])
    assert seen, "the heartbeat was never asked"
    assert result.exit_code == 2, result.output
    assert f"http://127.0.0.1:{port} is not a Chroma server" in result.stderr
    assert f"answered HTTP {status}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_refused_token_says_so_and_never_shows_it(tmp_path: Path) -> None:
    token = "s3cret-token-value"
    with http_answering(401, b'{"error": "Unauthorized"}') as (port, seen):
        settings = settings_for(
            tmp_path, chroma_host="127.0.0.1", chroma_port=port, chroma_token=token
        )
        with pytest.raises(ConfigurationError) as raised:
            open_chroma(settings)
    assert "refused the request (HTTP 401)" in str(raised.value)
    assert "GRISTMILL_CHROMA_TOKEN" in str(raised.value)
    assert token not in str(raised.value)
    assert seen[0].get("Authorization") == f"Bearer {token}"


def test_https_to_a_plain_http_server_names_the_tls_failure(
    tmp_path: Path, server: ChromaServer
) -> None:
    settings = settings_for(
        tmp_path, chroma_host=server.host, chroma_port=server.port, chroma_ssl=True
    )
    with pytest.raises(ConfigurationError) as raised:
        open_chroma(settings)
    message = str(raised.value)
    assert message.startswith(f"cannot reach the Chroma server at https://127.0.0.1:{server.port}")
    assert "SSL" in message


def test_a_host_given_as_a_url_keeps_its_own_port(tmp_path: Path, server: ChromaServer) -> None:
    # chromadb takes a URL host as it is and ignores the port setting; gristmill says the same
    # URL in its messages instead of gluing the port onto the URL.
    spelled = settings_for(tmp_path, chroma_host=f"http://127.0.0.1:{server.port}", chroma_port=1)
    embedder = HashEmbedder()
    store = ChunkStore(open_chroma(spelled), "url-host", embedder.name, embedder.dimension)
    assert store.count() == 0

    nowhere = free_port()
    wrong = settings_for(tmp_path, chroma_host=f"http://127.0.0.1:{nowhere}", chroma_port=8000)
    with pytest.raises(ConfigurationError) as raised:
        open_chroma(wrong)
    assert str(raised.value).startswith(
        f"cannot reach the Chroma server at http://127.0.0.1:{nowhere}: ConnectError"
    )


def test_a_token_the_server_does_not_check_is_harmless(
    tmp_path: Path, server: ChromaServer
) -> None:
    settings = settings_for(
        tmp_path, chroma_host=server.host, chroma_port=server.port, chroma_token="unused"
    )
    assert open_chroma(settings).heartbeat() > 0


def test_ingest_with_a_wrong_port_says_so_and_writes_nothing_locally(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Note\n\nThe coffee machine is cleaned on Fridays.\n")
    port = free_port()  # nothing listens there
    data = tmp_path / "data"
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(data))
    monkeypatch.setenv("GRISTMILL_MODEL_DIR", str(REPO / "data/models/all-MiniLM-L6-v2"))
    monkeypatch.setenv("GRISTMILL_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("GRISTMILL_CHROMA_PORT", str(port))
    result = CliRunner().invoke(app, ["ingest", str(docs), "--collection", "nowhere"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("gristmill: error")]
    assert errors == [
        f"gristmill: error: cannot reach the Chroma server at http://127.0.0.1:{port}: "
        "ConnectError: [Errno 111] Connection refused (start it (`chroma run --path DIR "
        "--port N`) or unset GRISTMILL_CHROMA_HOST)"
    ]
    assert not (data / "chroma").exists()  # no silent fallback to an on-disk store


def test_doctor_checks_the_server_as_a_run_would(tmp_path: Path, server: ChromaServer) -> None:
    from pipelines.doctor import _check_chroma

    as_url = settings_for(tmp_path, chroma_host=f"http://127.0.0.1:{server.port}", chroma_port=1)
    assert _check_chroma(as_url) == (
        "Chroma",
        True,
        f"server at http://127.0.0.1:{server.port}",
        "",
    )
    token = "s3cret-token-value"
    with http_answering(401, b"{}") as (port, _):
        refused = settings_for(
            tmp_path, chroma_host="127.0.0.1", chroma_port=port, chroma_token=token
        )
        name, ok, detail, fix = _check_chroma(refused)
    assert (name, ok) == ("Chroma", False)
    assert detail == f"the Chroma server at http://127.0.0.1:{port} refused the request (HTTP 401)"
    assert fix == "check GRISTMILL_CHROMA_TOKEN"
    assert token not in detail + fix


class StopsTheServer(HashEmbedder):
    """Runs `action` (stop, or stop and restart, the server) when asked for its second batch."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__()
        self.action = action

    def embed(self, texts: list[str]) -> Vectors:
        if len(self.calls) == 1:
            self.action()
        return super().embed(texts)


@pytest.fixture
def notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Six notes to ingest, one document a batch (so a server can go away between batches)."""
    monkeypatch.setattr(tasks.ingestion.driver, "DOCUMENTS_PER_BATCH", 1)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nRoom {i} is cleaned on day {i}.\n")
    return docs


def ingest_via(
    server: ChromaServer, docs: Path, embedder: HashEmbedder, collection: str, **parameters: Any
) -> Any:
    """`ingest_documents` over `docs` into `collection` on `server`, with `embedder` (and flow
    `parameters`); the data dir is "data" beside `docs`."""
    from pipelines.ingest import ingest_documents

    settings = settings_for(docs.parent / "data", chroma_host=server.host, chroma_port=server.port)
    with run_context(settings=settings, embedder=embedder):
        return ingest_documents(paths=[str(docs)], collection=collection, **parameters)


@pytest.mark.timeout(240)
def test_a_server_restart_mid_run_is_retried_and_the_run_completes(
    prefect_harness: None, tmp_path: Path, notes: Path
) -> None:
    with ExitStack() as servers:
        first = servers.enter_context(chroma_server(tmp_path / "db"))

        def restart() -> None:
            first.stop()
            # back on the same port about a second later, before the batch's retry (2 s)
            threading.Timer(
                1.0,
                lambda: servers.enter_context(chroma_server(tmp_path / "db", port=first.port)),
            ).start()

        state = ingest_via(first, notes, StopsTheServer(restart), "restarted", return_state=True)
        assert state.is_completed(), state.message
        report = state.result()
        assert report.added == 6 and report.collection_count == 6


@pytest.mark.timeout(240)
def test_a_server_gone_for_good_stops_the_run_in_words_and_a_rerun_finishes(
    prefect_harness: None, tmp_path: Path, notes: Path
) -> None:
    with chroma_server(tmp_path / "db") as server:
        state = ingest_via(server, notes, StopsTheServer(server.stop), "stopped", return_state=True)
    assert state.is_failed()
    assert state.message.startswith("lost the connection to the Chroma server: ConnectError")
    with pytest.raises(StoreUnavailableError) as raised:
        state.result()
    assert raised.value.exit_code == 1
    # the batch that finished before the server went away is kept; a rerun adds the rest
    with chroma_server(tmp_path / "db") as server:
        report = ingest_via(server, notes, HashEmbedder(), "stopped")
        assert report.unchanged >= 1 and report.added + report.unchanged == 6
        assert report.collection_count == 6


@pytest.mark.timeout(120)
def test_a_server_that_hangs_mid_run_times_out_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from tasks.chroma_client import server_errors

    monkeypatch.setattr(tasks.chroma_client, "REQUEST_TIMEOUT_S", 1.0)
    with chroma_server(tmp_path / "db") as running:
        settings = settings_for(tmp_path, chroma_host=running.host, chroma_port=running.port)
        embedder = HashEmbedder()
        store = ChunkStore(open_chroma(settings), "frozen", embedder.name, embedder.dimension)
        os.kill(running.process.pid, signal.SIGSTOP)  # alive, accepting, never answering
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as raised, server_errors():
                store.count()
            assert time.monotonic() - started < 10
            assert "ReadTimeout" in str(raised.value)
        finally:
            os.kill(running.process.pid, signal.SIGCONT)
        assert store.count() == 0  # the same client works again once the server does
