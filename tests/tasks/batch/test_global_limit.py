"""Batch requests paced by a Prefect global concurrency limit, shared across processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from pydantic import SecretStr

from tasks.batch.dispatch import run_row_batch
from tasks.batch.engines.chat import ChatRowEngine
from tasks.batch.job import RecordJob
from tasks.batch.reading import iter_row_chunks, preflight
from tasks.errors import ConfigurationError
from tasks.settings import Settings
from tests.support.openai_server import FakeOpenAI
from tests.support.tables import write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "sk-global-limit-test"
JOB = RecordJob(template="Echo {{ text }}", id_column="id")


def create_limit(name: str, limit: int, decay: float) -> None:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay)
        )


def settings_for(server: FakeOpenAI, data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        openai_base_url=server.base_url,
        openai_api_key=SecretStr(KEY),
        batch_concurrency=4,
        **extra,
    )


def rows(tmp_path: Path, count: int) -> list[Any]:
    src = write_csv(tmp_path / "rows.csv", ([i, f"row {i}"] for i in range(count)))
    return [r for chunk in iter_row_chunks(preflight(src, JOB), JOB, 1000) for r in chunk]


def test_every_request_takes_a_slot_of_the_prefect_rate_limit(
    tmp_path: Path, data_dir: Path
) -> None:
    create_limit("gristmill-test-rate", limit=4, decay=8.0)
    table = rows(tmp_path, 32)
    with FakeOpenAI(api_key=KEY) as server:
        unpaced = ChatRowEngine.from_settings(settings_for(server, data_dir), JOB)
        started = time.monotonic()
        assert {r.status for r in run_row_batch(table, unpaced, None)} == {"ok"}
        unpaced_s = time.monotonic() - started
        unpaced.close()

        settings = settings_for(server, data_dir, batch_global_limit="gristmill-test-rate")
        engine = ChatRowEngine.from_settings(settings, JOB)
        started = time.monotonic()
        results = run_row_batch(table, engine, None)
        paced_s = time.monotonic() - started
        engine.close()
    assert {r.status for r in results} == {"ok"} and len(results) == 32
    # slots are taken two at a time (half the limit of 4): one API call per two requests
    assert engine.limiter.global_acquisitions == 16
    # 8 slots/s with a burst of 4: the 32 requests need at least (32 - 4) / 8 = 3.5 s
    assert paced_s >= 3.0 > unpaced_s


def test_a_missing_or_decay_free_limit_is_a_configuration_error(
    tmp_path: Path, data_dir: Path
) -> None:
    create_limit("gristmill-test-no-decay", limit=4, decay=0.0)
    with FakeOpenAI(api_key=KEY) as server:
        for name, words in [
            ("gristmill-test-absent", "prefect gcl create gristmill-test-absent"),
            ("gristmill-test-no-decay", "no slot decay"),
        ]:
            settings = settings_for(server, data_dir, batch_global_limit=name)
            with pytest.raises(ConfigurationError, match=words):
                ChatRowEngine.from_settings(settings, JOB)
        assert server.calls == 0
