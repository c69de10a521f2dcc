"""Prefect's server on SQLite vs on PostgreSQL under several writers at once (issue 12).

In one run: a real PostgreSQL (Debian's package, initdb + pg_ctl in a temp dir, fsync on) and,
for each backend, a fresh `gristmill server` (SQLite in its data dir, or `--database-url` to
that PostgreSQL). Four writer processes each run one flow of N trivial task runs at the same
time. Reported per backend: the writers' task runs per second (all task runs / first start to
last flow end; the mean flow run alone, imports excluded), how long the server then took to
record every task run (it writes them from events, after the flows end), the recorded rate end
to end, and the errors: 503s and 500s the server answered with (logged with
PREFECT_SERVER_LOG_RETRYABLE_ERRORS), ERROR lines in its log, flow runs not Completed.

    .venv/bin/python -m benchmarks.prefect_database [--writers 4] [--task-runs 250] [--rounds 1]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.postgres import binaries, running_postgres
from tests.support.prefect_server import gristmill_server
from tests.support.prefect_writers import count_task_runs, run_writers, server_errors, wait_recorded


def measure(url: str | None, root: Path, name: str, writers: int, task_runs: int) -> dict[str, Any]:
    with gristmill_server(url, root, name) as server:
        done = run_writers(server.env, writers, task_runs, server.logs / "writers")
        ids = [run["flow_run_id"] for run in done.flow_runs if run.get("flow_run_id")]
        expected = writers * task_runs
        recorded, record_seconds = wait_recorded(server.api, ids, expected, timeout=600)
        total = count_task_runs(server.api, ids) if ids else 0
        errors = server_errors(server.logs / "server.log")
    not_completed = sum(1 for run in done.flow_runs if run.get("state") != "COMPLETED")
    flow_seconds = [float(run["seconds"]) for run in done.flow_runs if "seconds" in run]
    return {
        "backend": name,
        "writers_s": done.seconds,
        "flow_s": sum(flow_seconds) / max(1, len(flow_seconds)),
        "client_rate": expected / done.seconds,
        "record_after_s": record_seconds,
        "recorded_rate": recorded / (done.seconds + record_seconds),
        "recorded": f"{recorded}/{expected}",
        "other_state": total - recorded,
        "flows_not_completed": not_completed,
        **errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--task-runs", type=int, default=250, help="per writer (flow run)")
    parser.add_argument("--rounds", type=int, default=1, help="SQLite then PostgreSQL, N times")
    args = parser.parse_args()
    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"commit {commit}; {args.writers} writers x {args.task_runs} task runs; {bin_dir}")
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="gristmill-bench-db-") as tmp,
        running_postgres(bin_dir) as cluster,
    ):
        for round_ in range(args.rounds):
            for backend in ("sqlite", "postgres"):
                url = None
                if backend == "postgres":
                    url = cluster.create_database(f"bench_{round_}")
                root = Path(tmp) / f"{backend}-{round_}"
                root.mkdir()
                rows.append(measure(url, root, backend, args.writers, args.task_runs))
                print(rows[-1], flush=True)
    print()
    print(
        "| backend | writers wall | flow run (mean) | task runs/s (writers) | recorded after "
        "| task runs/s recorded | recorded | 503s | 500s | ERROR lines | flows not Completed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['backend']} | {row['writers_s']:.1f} s | {row['flow_s']:.1f} s | "
            f"{row['client_rate']:.1f} | "
            f"+{row['record_after_s']:.1f} s | {row['recorded_rate']:.1f} | {row['recorded']} | "
            f"{row['503']} | {row['500']} | {row['error lines']} | {row['flows_not_completed']} |"
        )


if __name__ == "__main__":
    main()
