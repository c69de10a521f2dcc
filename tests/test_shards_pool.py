"""Shards on a work pool, with real processes: a Prefect server, two process workers on the
`gristmill` pool, the shard deployments from prefect.yaml, `gristmill batch --shards 4` as the
parent, and the local OpenAI-compatible server counting what is paid. One worker is killed with
SIGKILL (with its flow-run processes, as when its machine dies) while its shards run: the server
marks those runs Crashed when their heartbeats stop, the parent runs them again on the other
worker, and the job ends with every row once and no finished call paid twice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.openai_server import FakeOpenAI
from tests.support.processes import (
    PrefectServer,
    prefect_cli,
    prefect_server_process,
    start,
    stop,
    tail,
    wait_for,
)

pytestmark = pytest.mark.slow

KEY = "sk-test-pool-secret-0123456789"
ROWS = 48
POOL = "gristmill"  # the pool prefect.yaml deploys to


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    # the triggers service evaluates proactive automations every few seconds by default
    with prefect_server_process(tmp_path_factory.mktemp("pool-server")) as prefect:
        yield prefect


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_sharded_batch_survives_a_worker_killed_mid_shard(
    server: PrefectServer, tmp_path: Path
) -> None:
    data = tmp_path / "shared-data"  # the one data dir every worker sees
    src = tmp_path / "tickets.csv"
    with src.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(
            [i, f"ticket {i}: the printer on floor {i} is jammed"] for i in range(ROWS)
        )
    out = tmp_path / "classified.csv"
    with FakeOpenAI(api_key=KEY) as fake:
        fake.latency = 1.0  # a shard of 12 rows, 2 in flight: ~6 s, long enough to be cut
        env = {
            **server.env,
            "GRISTMILL_DATA_DIR": str(data),
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": KEY,
            "GRISTMILL_LLM_MAX_RETRIES": "0",
            "GRISTMILL_BATCH_CONCURRENCY": "2",
            "GRISTMILL_BATCH_ROWS_PER_TASK": "2",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        log = server.logs / "pool.log"
        prefect_cli("work-pool", "create", POOL, "--type", "process", env=env, log=log)
        prefect_cli("deploy", "--name", "process-records/shard", env=env, log=log)
        workers = [
            start(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
                server.logs / f"worker-{n}.log",
            )
            for n in (1, 2)
        ]
        parent_log = server.logs / "parent.log"
        command = [
            sys.executable, "-m", "pipelines.cli", "batch", str(src), "-o", str(out),
            "--template", "Classify this ticket: {{ text }}", "--schema", "category,priority:int",
            "--id-column", "id", "--shards", "4", "--json",
        ]  # fmt: skip
        parent_env = {
            **env,
            "GRISTMILL_WORK_POOL": POOL,
            "GRISTMILL_SHARD_SILENCE_S": "45",
        }

        def why() -> str:
            logs = ("parent.log", "worker-1.log", "worker-2.log", "server.log")
            return "\n".join(f"--- {n}\n{tail(server.logs / n, 30)}" for n in logs)

        try:
            with (
                parent_log.open("wb") as log_out,
                (tmp_path / "report.json").open("wb") as out_json,
            ):
                parent = subprocess.Popen(
                    command, cwd=REPO, env=parent_env, stdout=out_json, stderr=log_out
                )

            def busy_worker() -> subprocess.Popen[bytes] | None:
                assert parent.poll() is None, why()
                if fake.completed_calls < 6:
                    return None  # some rows done and journaled first
                return next((w for w in workers if descendants(w.pid)), None)

            victim = wait_for("a worker running shards", busy_worker, 240, why)
            survivor = workers[1 - workers.index(victim)]
            in_flight = fake.calls - fake.completed_calls  # cut short: may be paid again
            for pid in [*descendants(victim.pid), victim.pid]:
                os.kill(pid, signal.SIGKILL)
            victim.wait(timeout=10)
            paid_before = fake.completed_calls

            code = wait_for("the parent to finish", parent.poll, 420, why)
        finally:
            for worker in workers:
                stop(worker)
        assert code == 0, why()
        report = json.loads((tmp_path / "report.json").read_text())
        assert (report["rows"], report["ok"], report["failed"]) == (ROWS, ROWS, 0)
        with out.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["id"] for r in rows] == [str(i) for i in range(ROWS)]  # each once, in order
        assert {r["status"] for r in rows} == {"ok"}
        prompts = Counter(
            r.body["messages"][-1]["content"]
            for r in fake.requests
            if r.path.endswith("/chat/completions")
        )
        assert len(prompts) == ROWS
        paid_twice = sum(count - 1 for count in prompts.values())
        assert paid_twice <= in_flight, (paid_twice, in_flight, paid_before)
        assert survivor.pid != victim.pid

    # the server shows the parent with its shards, the killed ones Crashed and run again
    runs = server.post("/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["gristmill-shard"]}}})
    states = Counter(r["state"]["type"] for r in runs)
    assert states["COMPLETED"] == 4 and states["CRASHED"] >= 1, states
    assert all(r["parent_task_run_id"] for r in runs)
    assert KEY not in (server.logs / "worker-1.log").read_text() + parent_log.read_text()
