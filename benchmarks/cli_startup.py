"""What a command costs before it does anything (issue 13): wall time of `gristmill summarize`
on one 2-line transcript, as a user runs it (a fresh process each time), in every server mode.

    python benchmarks/cli_startup.py [RUNS]      # default 3 runs per figure; medians

Figures, each as a ratio to T0 = wall of `python -c "import prefect, chromadb"` in the same run:
- ephemeral: GRISTMILL_SERVER=ephemeral, a temporary Prefect server inside every command
  (the behaviour before issue 13); first run (a new --out folder) and cached re-run;
- no server up: GRISTMILL_SERVER=auto with no server running (the first command of the day:
  it starts the kept server; the database already exists);
- server up: the kept server answers; first run and cached re-run.
Everything runs in a temporary data dir; the server it starts is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPT = "Alice: We ship the release on Friday.\nBob: I will write the changelog.\n"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="gristmill-startup-"))
    data = work / "data"
    (data / "transcripts").mkdir(parents=True)
    (data / "transcripts" / "standup.txt").write_text(TRANSCRIPT)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    base = {**clean, "GRISTMILL_DATA_DIR": str(data), "GRISTMILL_ENGINE": "offline"}
    ephemeral = {**base, "GRISTMILL_SERVER": "ephemeral"}
    auto = {**base, "GRISTMILL_SERVER": "auto"}
    gristmill = [sys.executable, "-m", "pipelines.cli"]
    counter = iter(range(1_000_000))

    def summarize(env: dict[str, str], out: Path | None = None) -> float:
        folder = out or work / f"out-{next(counter)}"  # a new folder: nothing cached
        return wall([*gristmill, "summarize", "--out", str(folder)], env)

    def stop_server() -> None:
        subprocess.run([*gristmill, "server", "stop"], cwd=REPO, env=auto, capture_output=True)

    figures: dict[str, list[float]] = {}
    try:
        import_floor = [sys.executable, "-c", "import prefect, chromadb"]
        figures["T0"] = [wall(import_floor, clean) for _ in range(runs)]
        summarize(ephemeral)  # warm-up: creates the run-history database
        figures["ephemeral, first run"] = [summarize(ephemeral) for _ in range(runs)]
        cached = work / "cached"
        summarize(ephemeral, cached)
        figures["ephemeral, cached re-run"] = [summarize(ephemeral, cached) for _ in range(runs)]
        cold = []
        for _ in range(runs):
            stop_server()
            cold.append(summarize(auto))
        figures["no server up (auto starts it), first run"] = cold
        figures["server up, first run"] = [summarize(auto) for _ in range(runs)]
        figures["server up, cached re-run"] = [summarize(auto, cached) for _ in range(runs)]
        figures["T0"] += [wall(import_floor, clean) for _ in range(runs)]
    finally:
        stop_server()
        shutil.rmtree(work, ignore_errors=True)

    t0 = statistics.median(figures["T0"])
    print(f"{'figure':<44} {'median':>8} {'x T0':>6}   runs (s)")
    for name, times in figures.items():
        median = statistics.median(times)
        runs_text = " ".join(f"{t:.1f}" for t in times)
        print(f"{name:<44} {median:>7.2f}s {median / t0:>6.2f}   {runs_text}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
