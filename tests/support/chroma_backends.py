"""Both Chroma backends for one test: an on-disk store, and a real `chroma run` server.

A test that takes `chroma_backend` (directly or through a fixture built on it) runs on disk;
marked `@on_both_chroma_backends` it runs a second time against the session's Chroma server,
so the store and ingestion scenarios pass the same checks on both (a pytest plugin, see
tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasks.chroma_client import open_chroma
from tasks.settings import Settings
from tests.support.chroma_process import ChromaServer, chroma_server

on_both_chroma_backends = pytest.mark.parametrize(
    "chroma_backend", ["disk", "server"], indirect=True
)


@pytest.fixture(scope="session")
def chroma_server_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One `chroma run` server for the whole session (each test empties it first)."""
    with chroma_server(tmp_path_factory.mktemp("chroma-server") / "db") as running:
        yield running


@pytest.fixture
def chroma_backend(request: pytest.FixtureRequest) -> ChromaServer | None:
    """None for an on-disk Chroma; the session's server when parametrized with "server"."""
    if getattr(request, "param", "disk") == "disk":
        return None
    server: ChromaServer = request.getfixturevalue("chroma_server_for_tests")
    return server


def on_backend(settings: Settings, server: ChromaServer | None) -> Settings:
    """`settings` as they are (on disk), or pointed at `server` with every collection deleted."""
    if server is None:
        return settings
    pointed = settings.model_copy(update={"chroma_host": server.host, "chroma_port": server.port})
    client = open_chroma(pointed)
    for collection in client.list_collections():
        client.delete_collection(collection.name)
    return pointed
