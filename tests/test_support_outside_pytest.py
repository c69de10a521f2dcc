"""The helpers in tests/support are also the benchmarks' (benchmarks/shards.py,
benchmarks/prefect_database.py start their Prefect servers with them): they must work in a
plain process, where no test run has shared a migrated database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_seeding_outside_a_test_run_leaves_the_server_to_make_its_database(
    tmp_path: Path,
) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.support.prefect_db import seed_prefect_database\n"
        "seed_prefect_database(Path(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "home")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "home" / "prefect.db").exists()
