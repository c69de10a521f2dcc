"""Sharded jobs, measured as the user runs them: whole `gristmill batch` commands, wall time.

1. Throughput on a work pool: the local OpenAI-compatible server in its own process answers
   after `--latency` (0.1 s) and refuses with 429 any call beyond 32 in flight, so its cap is
   32 / 0.1 s = 320 rows/s. In one run: the baseline, one process with 16 in flight
   (`gristmill batch`, no shards: at most 160 rows/s, half the cap), then `--shards 2` on a
   `gristmill` process pool with two workers, 16 in flight each, sharing one Prefect global
   concurrency limit (`GRISTMILL_BATCH_GLOBAL_LIMIT`, a rate just above the cap). Reported:
   rows/s of the command's wall time as a share of the cap, rows failed, calls refused.
2. Sharding overhead: the same job with 4 shards run in the command's process, one after
   another, against the same job without shards (same rows, same server): the extra wall time
   (4 shard flow runs, counting rows per shard, joining the parts, merging reports) as a share.

    python -m benchmarks.shards [--rows 9600] [--overhead-rows 4000] [--latency 0.1]
    python -m benchmarks.shards --rows 2000 --baseline-only   # issue 13: one process x16
    python -m benchmarks.shards --overhead-only --overhead-rows 7680 --latency 1.0  # 4 x 2 min
    python -m benchmarks.shards --rows 9600 --bare-only   # the machine's ceiling for 2 x 16

The ceiling: two bare clients (the openai SDK's raw route, 16 threads each, no gristmill, no
Prefect) in two processes at once against the same server, timed from the first call to the
last. It runs after the pool in every full run, so "two workers" reads against what this
machine's cores give any two clients, not only against the server's 320 rows/s.

Starts its own Prefect server (`prefect server start` on a free port, a throwaway home), pool,
workers and global limit; needs nothing else. Both parts take a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Event, Process, Queue
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-shards"
CAP_IN_FLIGHT = 32


def serve(latency: float, queue: Any, stop: Any) -> None:
    """The test server in its own process (its own GIL), reporting its counters at the end."""
    from tests.support.openai_server import FakeOpenAI

    with FakeOpenAI(api_key=KEY, latency=latency) as server:
        server.max_in_flight = CAP_IN_FLIGHT
        queue.put(server.base_url)
        while not stop.wait(0.2):
            pass
        queue.put({"calls": server.calls, "refused": server.refused_calls})


def ticket(i: int) -> str:
    return f"ticket {i}: the printer on floor {i % 40} is jammed again"


def write_rows(path: Path, rows: int) -> Path:
    from tests.support.tables import write_csv

    return write_csv(path, ([i, ticket(i)] for i in range(rows)))


def run(command: list[str], env: dict[str, str], log: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of a whole command and its --json report."""
    started = time.perf_counter()
    with log.open("ab") as err:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, check=False
        )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command[2:6])}... exited {done.returncode}; see {log}")
    return wall, json.loads(done.stdout)


def prefect(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=9600)
    parser.add_argument("--overhead-rows", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument(
        "--without-limit", action="store_true", help="also run the pool without the global limit"
    )
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="only part 2 (4 shards x 2 minutes: --overhead-rows 7680 --latency 1.0)",
    )
    parser.add_argument(
        "--bare-only",
        action="store_true",
        help="only the ceiling: two bare clients x16 in two processes at once",
    )
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="only one process x16 (issue 13's batch figure: --rows 2000)",
    )
    args = parser.parse_args()

    from tests.support.prefect_server import prefect_server_process, stop

    root = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    cap = CAP_IN_FLIGHT / args.latency
    queue: Any = Queue()
    stopping = Event()
    fake = Process(target=serve, args=(args.latency, queue, stopping), daemon=True)
    fake.start()
    base_url = queue.get(timeout=30)
    log = root / "commands.log"
    results: dict[str, Any] = {"cap_rows_per_s": cap, "latency_s": args.latency}
    if args.bare_only:
        results["bare_clients_2x16"] = bare_clients(base_url, args.rows, cap)
        print(json.dumps(results, indent=2))
        return
    with prefect_server_process(root / "prefect") as server:
        env = {
            **server.env,
            "GRISTMILL_DATA_DIR": str(root / "data"),
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": KEY,
            "GRISTMILL_BATCH_CONCURRENCY": "16",
        }
        src = write_rows(root / "rows.csv", args.rows)
        job = ["--template", "Classify: {{ text }}", "--schema", "category,priority:int"]
        job += ["--id-column", "id", "--json"]

        def batch(out: str, *extra: str, environment: dict[str, str] = env) -> tuple[float, Any]:
            """One command, with a data dir of its own: no journal of an earlier run to reuse."""
            command = [sys.executable, "-m", "pipelines.cli", "batch", str(src), "-o"]
            environment = {**environment, "GRISTMILL_DATA_DIR": str(root / f"data-{out}")}
            return run([*command, str(root / out), *job, *extra], environment, log)

        if args.overhead_only:
            overhead(args.overhead_rows, root, batch, results)
            print(json.dumps(results, indent=2))
            return
        # 1. one process x 16, then two workers x 16 on a pool, sharing one global limit
        wall, report = batch("baseline.csv")
        results["one_process_x16"] = summary(wall, report, cap)
        own_cap = 16 / args.latency  # what 16 in flight can reach at most
        results["one_process_x16"]["wall_share_of_160"] = round(report["rows"] / wall / own_cap, 3)
        results["one_process_x16"]["body_share_of_160"] = round(
            report["rows"] / report["duration_s"] / own_cap, 3
        )
        if args.baseline_only:
            # what the same server gives a bare client: the openai SDK's raw route from 16
            # threads, the same prompts, no gristmill (the ceiling this harness can show)
            bare = bare_client(base_url, args.rows)
            results["bare_client_x16"] = {
                "rows_per_s": round(bare, 1),
                "share_of_160": round(bare / own_cap, 3),
                "body_vs_bare": round(report["rows"] / report["duration_s"] / bare, 3),
            }
            print(json.dumps(results, indent=2))
            return
        prefect(["work-pool", "create", "gristmill", "--type", "process"], env, log)
        prefect(["deploy", "--name", "batch-records/shard"], env, log)
        # a rate just above the cap: it paces, the server's 32-in-flight quota decides
        prefect(
            ["gcl", "create", "bench-llm", "--limit", "32", "--slot-decay-per-second", "400"],
            env,
            log,
        )
        pool_env = {
            **env,
            "GRISTMILL_DATA_DIR": str(root / "data-pool.csv"),  # the parent's, shared
            "GRISTMILL_WORK_POOL": "gristmill",
            "GRISTMILL_BATCH_GLOBAL_LIMIT": "bench-llm",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        workers = start_workers(pool_env, root, "worker")
        try:
            time.sleep(5)  # both workers polling
            wall, report = batch("pool.csv", "--shards", "2", environment=pool_env)
            results["two_workers_x16_pool"] = summary(wall, report, cap)
            if args.without_limit:  # the same without the global limit: what its pacing costs
                for worker in workers:
                    stop(worker)
                pool_env.pop("GRISTMILL_BATCH_GLOBAL_LIMIT")
                pool_env["GRISTMILL_DATA_DIR"] = str(root / "data-pool-nolimit.csv")
                workers = start_workers(pool_env, root, "worker-nolimit")
                time.sleep(5)
                wall, report = batch("pool-nolimit.csv", "--shards", "2", environment=pool_env)
                results["two_workers_x16_pool_without_global_limit"] = summary(wall, report, cap)
        finally:
            for worker in workers:
                stop(worker)
        results["bare_clients_2x16"] = bare_clients(base_url, args.rows, cap)

        # 2. overhead of 4 shards in one process against the same job unsharded
        if args.skip_overhead:
            print(json.dumps(results, indent=2))
            return
        overhead(args.overhead_rows, root, batch, results)
    stopping.set()
    results["server"] = queue.get(timeout=30)
    fake.join(10)
    print(json.dumps(results, indent=2))


def caller(base_url: str) -> Callable[[int], None]:
    """One chat call of the job's prompt for row i, through the openai SDK's raw route (the
    route the chat engine uses), the reply parsed."""
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)

    def call(i: int) -> None:
        text = f"Classify: {ticket(i)}"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        json.loads(client.post("/chat/completions", cast_to=bytes, body=body))

    return call


def bare_client(base_url: str, rows: int) -> float:
    """Calls/s of the openai SDK alone against the server: `rows` chat calls of the job's
    prompts from 16 threads (the raw route the chat engine uses), after 50 to warm up."""
    from concurrent.futures import ThreadPoolExecutor

    call = caller(base_url)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(50)))
        started = time.perf_counter()
        list(pool.map(call, range(rows)))
        return rows / (time.perf_counter() - started)


def _bare_process(base_url: str, rows: int, go: Any, queue: Any) -> None:
    """One of `bare_clients`' processes: warm up, wait for the start, report its span."""
    from concurrent.futures import ThreadPoolExecutor

    call = caller(base_url)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(50)))
        queue.put("ready")
        go.wait()
        started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        list(pool.map(call, range(rows)))
        queue.put((started, time.monotonic()))


def bare_clients(base_url: str, rows: int, cap: float) -> dict[str, Any]:
    """What any two clients reach on this machine: `rows` calls split between two processes of
    16 threads each (`bare_client`'s calls), started together, from the first call to the last.
    The server refuses beyond 32 in flight; 2 x 16 never exceeds it, so every call counts."""
    queue: Any = Queue()
    go = Event()
    halves = [rows // 2, rows - rows // 2]
    processes = [Process(target=_bare_process, args=(base_url, n, go, queue)) for n in halves]
    for process in processes:
        process.start()
    for _ in processes:
        assert queue.get(timeout=120) == "ready"
    go.set()
    spans = [queue.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(30)
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "share_of_cap": round(rows / seconds / cap, 3),
    }


def start_workers(env: dict[str, str], logs: Path, name: str) -> list[subprocess.Popen]:
    """Two process workers polling the `gristmill` pool, logging to `logs/{name}-{1,2}.log`."""
    from tests.support.prefect_server import start

    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gristmill"]
    return [start(command, env, logs / f"{name}-{n}.log") for n in (1, 2)]


def overhead(rows: int, root: Path, batch: Any, results: dict[str, Any]) -> None:
    """The job with 4 shards in the command's process against the same job unsharded."""
    write_rows(root / "rows.csv", rows)
    wall_whole, whole = batch("whole.csv")
    wall_sharded, sharded = batch("sharded.csv", "--shards", "4")
    assert whole["ok"] == sharded["ok"] == rows, (whole, sharded)
    results["overhead"] = {
        "rows": rows,
        "unsharded_wall_s": round(wall_whole, 2),
        "four_shards_wall_s": round(wall_sharded, 2),
        "overhead_share": round(wall_sharded / wall_whole - 1, 4),
    }


def summary(wall: float, report: dict[str, Any], cap: float) -> dict[str, Any]:
    return {
        "rows": report["rows"],
        "ok": report["ok"],
        "failed": report["failed"],
        "wall_s": round(wall, 2),
        "rows_per_s": round(report["rows"] / wall, 1),
        "share_of_cap": round(report["rows"] / wall / cap, 3),
        "body_s": report["duration_s"],
        "body_share_of_cap": round(report["rows"] / report["duration_s"] / cap, 3),
        "rate_limit_pauses": report.get("rate_limit_pauses"),
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
