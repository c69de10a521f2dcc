"""A Prefect database that is already migrated, for the data dirs of tests.

The first `gristmill` command on a new data dir (or a new PREFECT_HOME) makes Prefect's SQLite
database and runs its migrations (113 with Prefect 3.8): ~15 s of CPU on an idle 2-core
machine, more under load, paid again by every test that starts a server or a command on a fresh
data dir. What those tests check does not depend on the database being new, so they start from
a copy of one database migrated once per test run (`prefect server database upgrade`, run once
for all pytest-xdist workers under a file lock) instead: the state a user's data dir is in from
its second command on. A brand-new database stays covered by the tests that do not seed: the
session's Prefect harness, tests/pipelines/test_server_reuse.py's first two commands of a new
data dir (they start its kept server), and the README's first command on a fresh clone.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

_shared: Path | None = None


def share_under(root: Path) -> None:
    """Where the template is made: a folder every worker of this test run sees (conftest)."""
    global _shared
    _shared = root


def seed_prefect_database(home: Path) -> None:
    """Put a migrated Prefect database at `home`/prefect.db unless one is there already;
    `home` is a PREFECT_HOME (a data dir's is `<data dir>/prefect`). Outside a test run (the
    benchmarks start servers with the same helpers) nothing is shared: the server makes and
    migrates its own database, as a user's first command does."""
    target = home / "prefect.db"
    if target.exists() or _shared is None:
        return
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), target)


def _template() -> Path:
    assert _shared is not None, "tests/conftest.py calls share_under() first"
    folder = _shared / "prefect-db-template"
    database = folder / "prefect.db"
    with (_shared / "prefect-db-template.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not database.exists():
            building = _shared / "prefect-db-template-building"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            from tests.support.prefect_server import clean_env  # it imports this module

            env = {
                **clean_env(),
                "PREFECT_HOME": str(building),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            done = subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0 or not (building / "prefect.db").exists():
                raise RuntimeError(f"prefect server database upgrade failed: {done.stderr[-2000:]}")
            building.rename(folder)
    return database
