"""A test module's fake OpenAI-compatible server as pytest fixtures, and settings that point at it.

    server, fake = fake_openai_fixtures(KEY)

`server` is one `FakeOpenAI` for the whole module, answering the key `KEY`; `fake` is that
server for one test, its faults, records and latency reset first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tasks.settings import Settings
from tests.support.openai_server import FakeOpenAI


def fake_openai_fixtures(api_key: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The `server` (module scope) and `fake` (one test) fixtures for a server taking `api_key`:
    assign them to module names `server` and `fake`."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=api_key) as running:
            yield running

    @pytest.fixture
    def fake(server: FakeOpenAI) -> FakeOpenAI:
        server.reset()
        server.latency = 0.0
        return server

    return server, fake


def fake_openai_settings(
    server: FakeOpenAI, api_key: str, data_dir: Path, **values: Any
) -> Settings:
    """Settings for `data_dir` that call `server` with `api_key`: a 2 s timeout and 4 calls at
    once unless `values` say otherwise."""
    defaults: dict[str, Any] = {
        "openai_base_url": server.base_url,
        "openai_api_key": SecretStr(api_key),
        "data_dir": data_dir,
        "llm_timeout_s": 2.0,
        "batch_concurrency": 4,
    }
    return Settings.model_validate(defaults | values)
