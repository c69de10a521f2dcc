"""A real PostgreSQL from Debian's `postgresql` package, in a temp dir on a free loopback port.

`initdb` with trust authentication (loopback only), `pg_ctl start`, and `pg_ctl stop -m fast`
at the end; ~2 s. As root the cluster belongs to the `postgres` user (PostgreSQL refuses to run
as root); as anyone else, to them. `postgres_cluster` is the session-scoped pytest fixture
(registered from tests/conftest.py); benchmarks use `running_postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.prefect_server import PrefectServer, gristmill_server

SUPERUSER = "postgres"
OS_USER = "postgres"


def binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin dir (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def install() -> Path | None:
    """Install Debian's `postgresql` with apt-get (as root); the bin dir, or None."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "postgresql"]
    for steps in ([command], [["apt-get", "update", "-q"], command]):
        for step in steps:
            subprocess.run(step, env=env, capture_output=True, timeout=900, check=False)
        if binaries() is not None:
            return binaries()
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    bin: Path
    data: Path
    port: int
    as_root: bool

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+asyncpg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the superuser; its output (fails the caller on an error)."""
        done = subprocess.run(
            [
                *(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port)),
                *("-U", SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed on {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str, owner: str = SUPERUSER) -> str:
        """A new empty database `name` owned by `owner`; its URL for that owner."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name, owner)

    def log(self, lines: int = 40) -> str:
        path = self.data / "log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        log = str(self.data / "log")
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{self.log()}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresCluster]:
    """A fresh cluster in a new temp dir (one the `postgres` user can reach), stopped and
    removed after."""
    base = Path(tempfile.mkdtemp(prefix="gristmill-pg-"))
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    cluster = PostgresCluster(bin=bin_dir, data=base / "data", port=free_port(), as_root=as_root)
    cluster.data.mkdir(mode=0o700)
    if as_root:
        shutil.chown(base, OS_USER)
        shutil.chown(cluster.data, OS_USER)
    init = cluster._run(
        "initdb",
        "-D",
        str(cluster.data),
        "-A",
        "trust",
        "-U",
        SUPERUSER,
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def postgres_binaries_or_skip() -> Path:
    """The PostgreSQL bin dir; installed with apt-get when missing and we are root, else skip."""
    found = binaries()
    if found is not None:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("PostgreSQL is not installed (as root: apt-get install -y postgresql)")
    found = install()
    if found is None:
        pytest.fail("apt-get install postgresql did not provide /usr/lib/postgresql/*/bin")
    return found


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One real PostgreSQL for the test session; each test makes its own database in it."""
    with running_postgres(postgres_binaries_or_skip()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prefect_on_postgres(
    postgres_cluster: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[PrefectServer]:
    """`gristmill server` on a new database of the session's PostgreSQL, one per test module
    (the database named after the module)."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    url = postgres_cluster.create_database(name)
    with gristmill_server(url, tmp_path_factory.mktemp(name), name) as server:
        yield server
