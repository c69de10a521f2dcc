"""PostgreSQL restarted under a running job (issue 12, faults): `gristmill batch` reports to a
`gristmill server` on a real PostgreSQL, and PostgreSQL is stopped and started again while the
rows are being processed. The job finishes with every row once, or fails in words (one line,
no traceback); either way a re-run finishes it, paying only for the rows not done."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.openai_server import FakeOpenAI
from tests.support.postgres import PostgresCluster
from tests.support.prefect_server import PrefectServer, tail
from tests.support.tables import write_csv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "sk-test-restart-secret-0123456789"
ROWS = 60


def test_a_job_survives_postgres_restarting_or_says_why_and_a_rerun_finishes_it(
    prefect_on_postgres: PrefectServer, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    src = write_csv(
        tmp_path / "tickets.csv",
        ([i, f"ticket {i}: the badge reader on door {i} is dead"] for i in range(ROWS)),
    )
    out = tmp_path / "out.csv"
    command = [
        sys.executable, "-m", "pipelines.cli", "batch", str(src), "-o", str(out),
        "--template", "Classify: {{ text }}", "--schema", "category,priority:int",
        "--id-column", "id", "--concurrency", "2",
    ]  # fmt: skip
    with FakeOpenAI(api_key=KEY) as fake:
        fake.latency = 0.5  # 60 rows, 2 in flight: ~15 s of work
        env = {
            **prefect_on_postgres.env,
            "GRISTMILL_DATA_DIR": str(tmp_path / "data"),
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": KEY,
            "GRISTMILL_BATCH_ROWS_PER_TASK": "5",
        }
        log = tmp_path / "first.log"
        with log.open("wb") as out_log:
            first = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out_log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 180
        while fake.completed_calls < 10:  # mid-job
            assert first.poll() is None, tail(log)
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.2)
        postgres_cluster.stop()
        time.sleep(3)  # the server's requests meet a database that is gone
        postgres_cluster.start()
        code = first.wait(timeout=600)
        output = log.read_text(errors="replace")
        paid = fake.completed_calls
        assert "Traceback" not in output, output[-3000:]
        assert KEY not in output
        if code != 0:  # failed in words: one line that says what happened
            errors = [line for line in output.splitlines() if line.startswith("gristmill: error:")]
            assert len(errors) == 1, output[-3000:]

        again = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        if code == 0:
            assert fake.completed_calls == paid  # nothing left to do: every row from the journal
        assert fake.completed_calls <= ROWS + 2  # each row paid once (+ 2 in flight, cut short)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [str(i) for i in range(ROWS)]
    assert {r["status"] for r in rows} == {"ok"}
    # the run history survived the restart too
    runs = prefect_on_postgres.post("/flow_runs/filter", {"limit": 50})
    assert sum(r["name"].startswith("batch tickets") for r in runs) == 2
