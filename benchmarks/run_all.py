"""Run every benchmark in turn, each in a fresh process, and say which ones failed.

    python benchmarks/run_all.py [NAME ...]      # e.g. summarize_speed batch_throughput

Each benchmark prints its own figures; record them with the command in benchmarks/README.md.
The QMSum ones skip (exit 0) when ../shared/datasets/qmsum-val is absent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "summarize_speed",
    "summary_quality",
    "embedder_speed",
    "ingest_speed",
    "docs_tree_ingest",
    "retrieval_quality",
    "retrieval_collection",
    "batch_throughput",
    "batch_api_resume",
    "many_small_transcripts",
    "cli_startup",
]


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in names or BENCHMARKS:
        if not (HERE / f"{name}.py").exists():
            print(f"== {name}: missing, skipped")
            continue
        print(f"== {name}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent)
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
