"""What only a Chroma server needs checking: the client is an HTTP one that writes nothing
locally, and a server that cannot be reached is one clear line. The store and ingestion
scenarios run on both backends where they are (`@on_both_chroma_backends` in
tests/tasks/test_vectorstore.py and tests/tasks/ingestion/test_ingest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tasks.chroma_client import open_chroma
from tasks.errors import ConfigurationError
from tasks.settings import Settings
from tests.support.chroma_backends import on_backend
from tests.support.chroma_process import ChromaServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path, chroma_server_for_tests: ChromaServer) -> Settings:
    """Settings for the session's server, emptied first so every test starts clean."""
    values = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    return on_backend(values, chroma_server_for_tests)


@pytest.fixture
def client(settings: Settings) -> Any:
    return open_chroma(settings)


def test_the_client_is_an_http_client_and_nothing_is_written_locally(
    settings: Settings, client: Any
) -> None:
    assert client.get_settings().chroma_api_impl.endswith("FastAPI")  # the HTTP client
    assert client.heartbeat() > 0
    assert not settings.chroma_dir.exists()


def test_an_unreachable_server_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import app
    from tests.support.chroma_process import free_port

    port = free_port()  # nothing listens there
    nowhere = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        chroma_host="127.0.0.1",
        chroma_port=port,
    )
    with pytest.raises(ConfigurationError, match=f"cannot reach the Chroma server at .*:{port}"):
        open_chroma(nowhere)
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GRISTMILL_MODEL_DIR", str(REPO / "data" / "models" / "all-MiniLM-L6-v2"))
    monkeypatch.setenv("GRISTMILL_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("GRISTMILL_CHROMA_PORT", str(port))
    result = CliRunner().invoke(app, ["query", "travel policy", "--json"])
    assert result.exit_code == 2, result.output
    assert "cannot reach the Chroma server" in result.output
    assert "Traceback" not in result.output
