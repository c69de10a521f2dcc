"""The same store and ingestion scenarios against a real `chroma run` server (HttpClient).

The on-disk tests' scenario functions run again here with settings that point at the server,
so both backends pass the same checks; a few checks only a server needs come after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tasks.chroma_client import open_chroma
from tasks.errors import ConfigurationError
from tasks.settings import Settings
from tests import test_ingest as ingest_scenarios
from tests import test_vectorstore as store_scenarios
from tests.support.chroma_process import ChromaServer, chroma_server
from tests.support.embedders import HashEmbedder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    with chroma_server(tmp_path_factory.mktemp("chroma") / "db") as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, server: ChromaServer) -> Settings:
    """Settings for the shared server, emptied first so every test starts clean."""
    values = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        chroma_host=server.host,
        chroma_port=server.port,
        doc_chunk_tokens=60,
        doc_chunk_overlap_tokens=0,
    )
    client = open_chroma(values)
    for collection in client.list_collections():
        client.delete_collection(collection.name)
    return values


@pytest.fixture
def client(settings: Settings) -> Any:
    return open_chroma(settings)


def test_the_client_is_an_http_client_and_nothing_is_written_locally(
    settings: Settings, client: Any
) -> None:
    assert client.get_settings().chroma_api_impl.endswith("FastAPI")  # the HTTP client
    assert client.heartbeat() > 0
    assert not settings.chroma_dir.exists()


@pytest.mark.parametrize(
    "scenario",
    [
        store_scenarios.test_upsert_query_replace_and_delete_by_source,
        store_scenarios.test_sources_flag_interrupted_and_mixed_writes,
        store_scenarios.test_another_embedding_model_is_refused,
        store_scenarios.test_collections_made_elsewhere,
        store_scenarios.test_reading_a_collection_that_does_not_exist_names_the_ones_that_do,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_store_scenarios(scenario: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if "monkeypatch" in scenario.__code__.co_varnames[: scenario.__code__.co_argcount]:
        scenario(client, monkeypatch)
    else:
        scenario(client)


def test_first_run_adds_and_second_run_computes_nothing(tmp_path: Path, settings: Settings) -> None:
    ingest_scenarios.test_first_run_adds_and_second_run_computes_nothing(tmp_path, settings)


@pytest.mark.parametrize("cleanup", ["none", "incremental", "full"])
def test_modify_delete_and_rename_under_each_cleanup_mode(
    tmp_path: Path, settings: Settings, cleanup: str
) -> None:
    ingest_scenarios.test_modify_delete_and_rename_under_each_cleanup_mode(
        tmp_path, settings, cleanup
    )


def test_a_crashed_run_resumes_to_exactly_the_current_chunks(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_scenarios.test_a_crashed_run_resumes_to_exactly_the_current_chunks(
        tmp_path, settings, monkeypatch
    )


def test_query_and_mmr_return_relevant_diverse_chunks(tmp_path: Path, settings: Settings) -> None:
    ingest_scenarios.test_query_and_mmr_return_relevant_diverse_chunks(tmp_path, settings)


def test_the_ingest_flow_against_the_server(
    prefect_harness: None, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_scenarios.test_ingest_flow_reports_and_publishes_an_artifact(
        prefect_harness, tmp_path, settings, monkeypatch
    )
    # what the flow wrote is on the server, seen by a client of its own
    import chromadb

    other = chromadb.HttpClient(host=settings.chroma_host or "", port=settings.chroma_port)
    stored = other.get_collection("flow-docs").get(include=[])
    docs = tmp_path / "docs"
    (docs / "bad.txt").unlink()  # quarantined by the second run: it never reached the store
    assert set(stored["ids"]) == ingest_scenarios.expected_ids(docs, settings, HashEmbedder())


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
