"""The database behind `gristmill server`: which URL wins, the password masked, and a
PostgreSQL that cannot serve Prefect refused in one line before any server starts (a real
PostgreSQL, tests/support/postgres.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.prefect_database import Database, chosen, masked, server_settings
from tasks.errors import ConfigurationError
from tests.conftest import REPO
from tests.support.postgres import PostgresCluster, free_port

SECRET = "Very-Secret-Pw"


def test_the_flag_wins_over_prefects_setting_and_plain_postgresql_means_asyncpg(
    tmp_path: Path,
) -> None:
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://env@db:5432/env"}
    assert chosen(None, env, tmp_path).url == env["PREFECT_API_DATABASE_CONNECTION_URL"]
    flag = chosen(f"postgresql://me:{SECRET}@db.example:6543/prefect", env, tmp_path)
    assert flag.url == f"postgresql+asyncpg://me:{SECRET}@db.example:6543/prefect"
    assert flag.describe() == "PostgreSQL me@db.example:6543/prefect"
    assert chosen(None, {}, tmp_path) == Database(None, tmp_path)
    assert chosen(None, {}, tmp_path).describe() == f"SQLite at {tmp_path / 'prefect.db'}"


def test_settings_for_prefect_cover_both_of_its_names() -> None:
    database = Database("postgresql+asyncpg://u@h/d", Path("."))
    settings = server_settings(database, migrate=False)
    assert settings["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == database.url
    assert settings["PREFECT_API_DATABASE_CONNECTION_URL"] == database.url
    assert settings["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"
    assert settings["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"
    assert server_settings(Database(None, Path(".")), migrate=True) == {}


def test_masked_hides_the_password() -> None:
    shown = masked(f"postgresql+asyncpg://me:{SECRET}@h:5432/d")
    assert SECRET not in shown and "me:***@h:5432/d" in shown


@pytest.mark.parametrize(
    "url",
    ["mysql://me:pw@h/d", "postgresql+psycopg://me:pw@h/d", "postgresql+asyncpg://me@h:5432"],
)
def test_urls_prefect_cannot_use_are_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        chosen(url, {}, tmp_path)
    assert "postgresql+asyncpg://" in str(raised.value)


def server(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "server", "--port", str(free_port()), *args],
        cwd=REPO,
        env={**env, "GRISTMILL_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gristmill: error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert SECRET not in done.stdout + done.stderr


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://me:{SECRET}@127.0.0.1:{port}/prefect"
    done = server("--database-url", url, tmp_path=tmp_path)
    assert_one_line(done, f"127.0.0.1:{port}", "connection refused")


def test_prefects_own_setting_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    env_url = f"postgresql+asyncpg://me:{SECRET}@127.0.0.1:{port}/prefect"
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = env_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRISTMILL_")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "server", "--port", str(free_port())],
        cwd=REPO,
        env={**env, "GRISTMILL_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line(done, f"127.0.0.1:{port}")


def test_a_missing_database_is_one_line(postgres_cluster: PostgresCluster, tmp_path: Path) -> None:
    url = postgres_cluster.url("no_such_database", password=SECRET)
    assert_one_line(server("--database-url", url, tmp_path=tmp_path), "no_such_database")


def test_a_role_that_may_not_create_pg_trgm_is_told_what_to_run(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    postgres_cluster.psql("CREATE ROLE limited LOGIN")
    postgres_cluster.psql("CREATE DATABASE not_theirs")  # owned by postgres: no CREATE for them
    postgres_cluster.psql("GRANT ALL ON SCHEMA public TO limited", "not_theirs")
    url = postgres_cluster.url("not_theirs", "limited", SECRET)
    done = server("--database-url", url, tmp_path=tmp_path)
    assert_one_line(done, "pg_trgm", "limited", 'psql -d not_theirs -c "CREATE EXTENSION pg_trgm;"')


def test_no_migrate_on_a_database_without_prefects_schema_is_refused(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = postgres_cluster.create_database("empty_replica")
    done = server("--database-url", url, "--no-migrate", tmp_path=tmp_path)
    assert_one_line(done, "no Prefect schema", "prefect server database upgrade -y")
    # the owner may create pg_trgm, and did: a later first server finds it there
    assert postgres_cluster.psql("SELECT extname FROM pg_extension", "empty_replica").count(
        "pg_trgm"
    )
