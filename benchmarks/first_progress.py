"""What a new user sees first (issue 10): a 200-document ingest on a new data dir, no Prefect
server up (the command starts one), on a terminal. Reports when the bar first shows document
counts, when it first shows a time left (an estimate, `~h:mm:ss`, until the work begins; then the
measured pace), when chunk counts first appear, and the whole command's wall time.

    python benchmarks/first_progress.py [--files 200] [--seed 0]

The documents are a realistic docs tree (tests/support/docs_tree.py: Markdown and MDX with front
matter, code, tables, long pages and front-matter-only stubs). The command runs on a pseudo
terminal, as a user's would, and its screen is read as it is drawn. The server it starts is
stopped at the end; everything lives in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


def watch(command: list[str], env: dict[str, str]) -> dict[str, float | None]:
    """Seconds from the start to the first counts, time left and chunk count; the wall."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    screen = b""
    seen: dict[str, float | None] = {"counts": None, "time_left": None, "chunks": None}
    patterns = {
        "counts": r"\b\d+/\d+\b",
        "time_left": r"left\s+~?\d+:\d\d:\d\d",
        "chunks": r"\d+ chunks? embedded",
    }
    while True:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data and process.poll() is not None:
                break
            screen += data
            text = ANSI.sub(b"\n", screen).decode("utf-8", "replace")
            for name, pattern in patterns.items():
                if seen[name] is None and re.search(pattern, text):
                    seen[name] = time.monotonic() - started
        elif process.poll() is not None:
            break
    seen["wall"] = time.monotonic() - started
    first = re.search(
        r"left\s+(~?\d+:\d\d:\d\d)", ANSI.sub(b"\n", screen).decode("utf-8", "replace")
    )
    print(f"first time left shown: {first.group(1) if first else None}; exit {process.returncode}")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from tests.support.docs_tree import build_tree

    with tempfile.TemporaryDirectory(prefix="first-progress-") as name:
        root = Path(name)
        build_tree(root / "docs", args.files, args.seed)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
        env["GRISTMILL_DATA_DIR"] = str(root / "data")
        gristmill = [sys.executable, "-m", "pipelines.cli"]
        print(f"{args.files} files; load average {os.getloadavg()[0]:.1f}")
        try:
            seen = watch([*gristmill, "ingest", str(root / "docs")], env)
        finally:
            subprocess.run([*gristmill, "server", "stop"], cwd=REPO, env=env, check=False)
        for what, seconds in seen.items():
            print(f"  {what:<10} {'-' if seconds is None else f'{seconds:.1f} s'}")


if __name__ == "__main__":
    main()
