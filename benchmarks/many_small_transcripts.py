"""Many small files: `gristmill summarize` over 2,000 three-line transcripts, offline engine.

    .venv/bin/python benchmarks/many_small_transcripts.py [--count 2000] [--repo PATH]

Writes the transcripts to a temp dir and times the whole command as a user runs it (a fresh
process, no PREFECT_API_URL: Prefect's temporary server on a PREFECT_HOME of its own), wall
clock from spawn to exit, then once more with every summary cached. `--repo` runs another
checkout's code with this one's virtualenv (for before/after figures). Issue 16 measured
16 min 25 s for 2,000 files before small transcripts were grouped into tasks; the goal is
60 s or less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 60.0

PEOPLE = ["Alice", "Bob", "Chen", "Dana", "Emeka", "Farah"]


def write_transcripts(folder: Path, count: int) -> None:
    """`count` three-line "Speaker: text" transcripts, different in their words."""
    for i in range(count):
        a, b, c = (PEOPLE[(i + k) % len(PEOPLE)] for k in range(3))
        text = (
            f"{a}: We reviewed the budget for project {i} and the supplier quotes.\n"
            f"{b}: I will send the revised plan for project {i} by Friday.\n"
            f"{c}: Agreed, we decided to go with the second supplier for item {i}.\n"
        )
        (folder / f"meeting-{i:05d}.txt").write_text(text, encoding="utf-8")


def run(repo: Path, inputs: Path, out: Path, env: dict[str, str]) -> tuple[float, dict]:
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "summarize",
        str(inputs),
        "--out",
        str(out),
        "--engine",
        "offline",
        "--json",
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        sys.exit(f"gristmill summarize exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code runs")
    parser.add_argument("--once", action="store_true", help="skip the all-cached second run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gristmill-many-small-") as tmp:
        root = Path(tmp)
        inputs, out = root / "in", root / "out"
        inputs.mkdir()
        write_transcripts(inputs, args.count)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GRISTMILL_", "OPENAI_", "PREFECT_"))
        }
        env |= {
            "GRISTMILL_DATA_DIR": str(root / "data"),
            "PREFECT_HOME": str(root / "prefect"),
            "PYTHONPATH": str(args.repo.resolve()),
        }
        print(f"{args.count} three-line transcripts; code from {args.repo.resolve()}", flush=True)
        figures = {}
        for label in ("first run",) if args.once else ("first run", "all cached"):
            wall, report = run(args.repo, inputs, out, env)
            statuses: dict[str, int] = {}
            for item in report["transcripts"]:
                statuses[item["status"]] = statuses.get(item["status"], 0) + 1
            figures[label] = wall
            print(
                f"{label}: {wall:.1f} s wall ({statuses}); flow body {report['duration_s']:.1f} s"
            )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of a run: {peak:.0f} MB")
        verdict = "met" if figures["first run"] <= GOAL_S else "NOT met"
        print(f"goal <= {GOAL_S:.0f} s for the first run: {verdict}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
