"""Batch API jobs across a kill -9, and how a large job is submitted, as the server counts them.

1. `gristmill batch --mode batch-api` on 400 rows (100 a batch) against the local server speaking
   the Files and Batch endpoints, its batches kept in progress; killed with SIGKILL (the command
   and its temporary Prefect server) once every batch is being polled; the batches then allowed
   to finish and the same command run again; then every batch still open is run, as the real
   service runs batches nobody polls. Printed: request lines the server ran, batches created,
   output rows, rows lost and duplicated.
2. The same command on 2,000 rows (20 batches, each ending at its third poll): batches created
   before the first one ended, and the spread of their creation times.

    python -m benchmarks.batch_api_resume [--rows 400] [--big 2000] [--repo PATH]

`--rows 0` or `--big 0` skips that part.

`--repo` runs another checkout's code (e.g. `git archive COMMIT | tar -x -C DIR`) for the
"before" figure; the server is always this one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.openai_server import FakeOpenAI
from tests.support.prefect_server import user_env
from tests.support.tables import write_csv

KEY = "sk-bench-batch-api"
REPO = Path(__file__).resolve().parents[1]
NEVER = 10**9


def tickets(path: Path, count: int) -> Path:
    return write_csv(path, ([i, f"ticket {i}: the printer is on fire"] for i in range(count)))


def start(repo: Path, src: Path, out: Path, data: Path, server: FakeOpenAI) -> subprocess.Popen:
    env = user_env(
        data,
        GRISTMILL_BATCH_ROWS_PER_TASK="100",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY=KEY,
        PYTHONPATH=str(repo),
    )
    command = [sys.executable, "-m", "pipelines.cli", "batch", str(src), "--output", str(out)]
    command += ["--template", "Classify this ticket: {{ text }}", "--schema", "category"]
    command += ["--id-column", "id", "--mode", "batch-api", "--poll-interval", "0.2", "--json"]
    return subprocess.Popen(
        command,
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a kill reaches its temporary Prefect server too
    )


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.1)


def finish(process: subprocess.Popen, seconds: float) -> int:
    try:
        return process.wait(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def created(server: FakeOpenAI) -> list[str]:
    return [batch_id for _, event, batch_id in server.batch_events if event == "created"]


def output_ids(out: Path) -> list[int]:
    if not out.exists():
        return []
    return [int(json.loads(line)["id"]) for line in out.read_text().splitlines()]


def kill_and_rerun(repo: Path, tmp: Path, rows: int) -> None:
    src, out, data = tickets(tmp / "kill.csv", rows), tmp / "kill.jsonl", tmp / "kill-data"
    expected = -(-rows // 100)
    with FakeOpenAI(api_key=KEY) as server:
        server.batch_polls = NEVER
        first = start(repo, src, out, data, server)
        in_flight = min(expected, 4)  # before: a 4-thread runner, one batch each
        wait_for(
            lambda: (
                len(created(server)) >= in_flight
                and all(server.batch_status(b) == "in_progress" for b in created(server))
            ),
            180,
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        before = len(created(server))
        server.release_batches()
        server.batch_polls = 1
        code = finish(start(repo, src, out, data, server), 600)
        server.run_open_batches()  # batches nobody polls still run (and are paid for)
        ids = output_ids(out)
        print(f"kill -9 mid-poll, then the same command ({rows} rows, {expected} batches):")
        print(f"  batches created by the killed run  {before}")
        print(f"  batches created by the re-run      {len(created(server)) - before}")
        print(f"  request lines the server ran       {server.batch_lines} for {rows} rows")
        print(f"  re-run exit code                   {code}")
        print(f"  output rows {len(ids)}, lost {len(set(range(rows)) - set(ids))}, ", end="")
        print(f"duplicated {len(ids) - len(set(ids))}")


def submitted_up_front(repo: Path, tmp: Path, rows: int) -> None:
    src, out, data = tickets(tmp / "big.csv", rows), tmp / "big.jsonl", tmp / "big-data"
    with FakeOpenAI(api_key=KEY) as server:
        server.batch_polls = 3
        started = time.monotonic()
        code = finish(start(repo, src, out, data, server), 1200)
        wall = time.monotonic() - started
        events = server.batch_events
        first_end = min((t for t, event, _ in events if event == "ended"), default=float("inf"))
        made = [t for t, event, _ in events if event == "created"]
        early = sum(t < first_end for t in made)
        print(f"\n{rows:,} rows, 100 a batch (exit code {code}, wall {wall:.1f} s):")
        print(f"  batches created                    {len(made)}")
        print(f"  created before the first one ended {early}")
        print(f"  creation spread                    {max(made) - min(made):.2f} s")
        print(f"  request lines the server ran       {server.batch_lines}")
        print(f"  output rows                        {len(output_ids(out))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--big", type=int, default=2000)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.rows:
            kill_and_rerun(args.repo.resolve(), Path(tmp), args.rows)
        if args.big:
            submitted_up_front(args.repo.resolve(), Path(tmp), args.big)


if __name__ == "__main__":
    main()
