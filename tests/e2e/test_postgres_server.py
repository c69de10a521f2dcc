"""`gristmill server --database-url postgresql+asyncpg://...` end to end, on a real PostgreSQL
(tests/support/postgres.py): the schema and pg_trgm are made, the password is never printed,
schedules fire and `serve` and a process worker complete their runs, which the UI's Runs page
shows, four writers at once get no 503 and lose no task run, and the history is in PostgreSQL:
a second server on another data dir (an extra replica, with `--no-migrate`) sees it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.support.postgres import PostgresCluster
from tests.support.prefect_server import (
    PrefectServer,
    gristmill_server,
    tail,
)
from tests.support.prefect_writers import (
    Writers,
    count_task_runs,
    run_writers,
    server_errors,
    wait_recorded,
)
from tests.support.scheduled import (
    check_runs_page_shows,
    check_scheduled_runs_completed,
    scheduled_runs_completed,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROLE, PASSWORD, DATABASE = "gristmill", "pg-Secret-4711", "prefect_e2e"
WRITERS, TASK_RUNS = 4, 100
MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> str:
    """An empty database owned by a role with a password (not a superuser): its URL."""
    postgres_cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    postgres_cluster.create_database(DATABASE, owner=ROLE)
    return postgres_cluster.url(DATABASE, ROLE, PASSWORD)


@pytest.fixture(scope="module")
def pg_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with gristmill_server(database, tmp_path_factory.mktemp("pg"), "first") as server:
        yield server


@pytest.fixture(scope="module")
def writers(pg_server: PrefectServer) -> Writers:
    """Four flow runs of 100 task runs each, written to the server at the same time."""
    done = run_writers(pg_server.env, WRITERS, TASK_RUNS, pg_server.logs / "writers")
    failed = [tail(log) for code, log in zip(done.exit_codes, done.logs, strict=True) if code]
    assert not failed, failed[0]
    return done


def test_server_makes_the_schema_and_pg_trgm_and_never_prints_the_password(
    pg_server: PrefectServer, postgres_cluster: PostgresCluster, database: str
) -> None:
    output = (pg_server.logs / "server.log").read_text()
    assert f"database: PostgreSQL {ROLE}@127.0.0.1:{postgres_cluster.port}/{DATABASE}" in output
    assert PASSWORD not in output
    assert postgres_cluster.psql("SELECT extname FROM pg_extension", DATABASE).count("pg_trgm")
    assert postgres_cluster.psql("SELECT count(*) FROM alembic_version", DATABASE) == "1"
    assert int(postgres_cluster.psql("SELECT count(*) FROM flow", DATABASE)) >= 0
    home = Path(pg_server.env["GRISTMILL_DATA_DIR"]) / "prefect"
    assert not (home / "prefect.db").exists()

    doctor = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "doctor"],
        cwd=REPO,
        env={k: v for k, v in pg_server.env.items() if k != "PREFECT_API_URL"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert f"run history is kept in PostgreSQL {ROLE}@127.0.0.1" in doctor.stdout, doctor.stdout
    assert PASSWORD not in doctor.stdout + doctor.stderr


@pytest.fixture(scope="module")
def scheduled_runs(
    pg_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """The server's scheduler, on PostgreSQL, creates the runs; `gristmill serve` and a
    process worker each run one to Completed (`tests.support.scheduled`)."""
    with scheduled_runs_completed(
        pg_server, tmp_path_factory.mktemp("scheduled"), MODEL_DIR
    ) as runs:
        yield runs


def test_a_schedule_fires_on_postgres_and_serve_and_a_worker_complete_the_runs(
    scheduled_runs: dict[str, dict[str, Any]],
) -> None:
    check_scheduled_runs_completed(scheduled_runs)


def test_runs_page_on_postgres_shows_the_scheduled_runs(
    pg_server: PrefectServer, scheduled_runs: dict[str, dict[str, Any]], chromium: str
) -> None:
    check_runs_page_shows(chromium, pg_server.url, scheduled_runs)


def test_four_writers_at_once_get_no_503_and_every_task_run_is_recorded(
    pg_server: PrefectServer, writers: Writers
) -> None:
    ids = [run["flow_run_id"] for run in writers.flow_runs]
    assert [run["state"] for run in writers.flow_runs] == ["COMPLETED"] * WRITERS
    expected = WRITERS * TASK_RUNS
    recorded, _ = wait_recorded(pg_server.api, ids, expected, timeout=180)
    assert recorded == expected
    assert count_task_runs(pg_server.api, ids) == expected  # none extra, none in another state
    for flow_run_id in ids:
        assert pg_server.get(f"/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    errors = server_errors(pg_server.logs / "server.log")
    assert errors == {"503": 0, "500": 0, "error lines": 0}, tail(pg_server.logs / "server.log")
    assert pg_server.busy_answers == 0


def test_history_is_in_postgres_a_second_server_without_migrations_sees_it(
    pg_server: PrefectServer,
    writers: Writers,
    database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An extra replica: another data dir and port, `--no-migrate`, the same database."""
    root = tmp_path_factory.mktemp("replica")
    with gristmill_server(database, root, "replica", "--no-migrate") as replica:
        for run in writers.flow_runs:
            found = replica.get(f"/flow_runs/{run['flow_run_id']}")
            assert found["state"]["type"] == "COMPLETED"
            assert found["flow_id"] == pg_server.get(f"/flow_runs/{run['flow_run_id']}")["flow_id"]
        assert not (root / "replica-data" / "prefect" / "prefect.db").exists()
