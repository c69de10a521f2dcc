"""Batch records throughput against the local OpenAI-compatible server.

2,000 rows, 100 ms server latency, 16 requests in flight: throughput as a share of the cap's
limit (16 / 0.1 s = 160 rows/s); then the same with 20% of requests answered 429
(Retry-After: 1), where every row must still end ok. Runs the row engine as the flow's tasks
do (batches of rows sharing one limiter), without the Prefect server.

    python -m benchmarks.batch_throughput [--rows 2000] [--concurrency 16] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Event, Process, Value
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tasks.batch.dispatch import row_batches, run_row_batch
from tasks.batch.engines.chat import ChatRowEngine
from tasks.batch.job import RecordJob, load_schema
from tasks.batch.reading import iter_row_chunks, preflight
from tasks.settings import Settings
from tests.support.openai_server import FakeOpenAI, Fault
from tests.support.tables import write_csv

KEY = "sk-bench"


def serve(latency: float, fault_rate: float, port: Any, stop: Any) -> None:
    """The test server in its own process, so it does not share the client's GIL."""
    with FakeOpenAI(api_key=KEY, latency=latency) as server:
        server.fault_rate = fault_rate
        server.fault_kind = Fault.status(429, retry_after=1)
        port.value = server.port
        stop.wait()


def run(src: Path, data: Path, concurrency: int, latency: float, fault_rate: float) -> dict:
    port, stop = Value("i", 0), Event()
    process = Process(target=serve, args=(latency, fault_rate, port, stop), daemon=True)
    process.start()
    deadline = time.monotonic() + 30
    while not port.value and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        return measure(f"http://127.0.0.1:{port.value}/v1", src, data, concurrency)
    finally:
        stop.set()
        process.join(5)


def measure(base_url: str, src: Path, data: Path, concurrency: int) -> dict:
    settings = Settings.model_validate(
        {
            "openai_base_url": base_url,
            "openai_api_key": SecretStr(KEY),
            "data_dir": data,
            "batch_concurrency": concurrency,
        }
    )
    job = RecordJob(
        template="Classify this ticket: {{ text }}",
        schema=load_schema("category,priority:int"),
        id_column="id",
    )
    engine = ChatRowEngine.from_settings(settings, job)
    rows = [r for chunk in iter_row_chunks(preflight(src, job), job, 10_000) for r in chunk]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as tasks:  # the flow's task runner: batches of rows
        batches = row_batches(rows, settings.batch_rows_per_task)
        results = [
            r
            for batch in tasks.map(lambda b: run_row_batch(b, engine, None), batches)
            for r in batch
        ]
    elapsed = time.monotonic() - started
    engine.close()
    return {
        "rows": len(results),
        "ok": sum(r.status == "ok" for r in results),
        "seconds": elapsed,
        "rows_per_s": len(results) / elapsed,
        "llm_calls": sum(r.calls for r in results),
        "pauses": engine.limiter.pauses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    cap = args.concurrency / args.latency
    with tempfile.TemporaryDirectory() as tmp:
        tickets = ([i, f"ticket {i}: the printer is on fire"] for i in range(args.rows))
        src = write_csv(Path(tmp) / "tickets.csv", tickets)
        phases = [("no faults", 0.0), ("20% 429, Retry-After 1", 0.2)]
        print(f"cap limit: {args.concurrency} in flight / {args.latency} s = {cap:.0f} rows/s\n")
        print(
            f"{'phase':<24} {'rows':>5} {'ok':>5} {'s':>7} {'rows/s':>7} {'of cap':>7} "
            f"{'ok calls':>8} {'pauses':>6}"
        )
        for name, rate in phases:
            r = run(src, Path(tmp) / "data", args.concurrency, args.latency, rate)
            print(
                f"{name:<24} {r['rows']:>5} {r['ok']:>5} {r['seconds']:>7.1f} "
                f"{r['rows_per_s']:>7.1f} {r['rows_per_s'] / cap:>7.0%} {r['llm_calls']:>8} "
                f"{r['pauses']:>6}"
            )


if __name__ == "__main__":
    main()
