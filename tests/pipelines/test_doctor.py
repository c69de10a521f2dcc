"""`gristmill doctor` names what breaks a nightly run before the night: wrong package versions,
a scheduler that creates no runs, and where the run history really is."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.doctor import _check_pins, _check_prefect, _check_scheduler
from tasks.settings import Settings


def test_installed_packages_satisfy_the_pins() -> None:
    # Fails on an install with SQLAlchemy 2.1 under Prefect 3.8 (the scheduler breaks).
    _name, ok, detail, _fix = _check_pins()
    assert ok, detail


def test_run_history_is_named_where_the_cli_writes_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    _name, ok, detail, _fix = _check_prefect(settings)
    assert ok
    assert str((data_dir / "prefect" / "prefect.db").resolve()) in detail
    assert "~/.prefect" not in detail


def test_a_scheduled_deployment_without_scheduled_runs_is_a_red_line(
    prefect_harness: None,
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.settings import PREFECT_API_URL

    @flow(name="doctor-probe")
    def probe() -> None:
        pass

    async def register() -> None:
        async with get_client() as client:
            flow_id = await client.create_flow(probe)
            await client.create_deployment(
                flow_id=flow_id,
                name="every-minute",
                schedules=[
                    DeploymentScheduleCreate(
                        schedule=IntervalSchedule(interval=timedelta(minutes=1)), active=True
                    )
                ],
            )

    asyncio.run(register())
    url = PREFECT_API_URL.value() or os.environ["PREFECT_API_URL"]
    # No scheduler loop has run in these milliseconds: what a failing scheduler looks like.
    name, ok, detail, fix = _check_scheduler(url, grace_seconds=0)
    assert (name, ok) == ("Prefect scheduler", False)
    assert "every-minute" in detail and "scheduler service is failing" in detail
    assert "SQLAlchemy" in fix
    # A young deployment is given the scheduler's time.
    assert _check_scheduler(url)[1] is True
