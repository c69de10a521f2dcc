"""`gristmill ingest` on a generated docs tree, as a user runs it (issue 15, items 4 and 6).

    python benchmarks/docs_tree_ingest.py [--files 1000] [--seed 0] [--skip-crash | --kill-at 0.4]
                                          [--json]

The tree is tests/support/docs_tree.py's: Markdown and MDX pages with front matter, components,
code, tables and admonitions, short and long pages, ~17 % API stubs with only front matter, a
few blank files and one binary page (quarantined: the command exits 1 by design). The default
1,000 files give ~12k chunks (~40 min on 2 quiet cores: most of it three embeddings of the
corpus, by the first ingest, the raw embedder and the crashed run with its resume).

Every ingest is a whole `gristmill ingest --cleanup full --json` process, with the real int8
MiniLM embedder, an on-disk Chroma under a fresh GRISTMILL_DATA_DIR, and a Prefect server up
before it starts, as a user has one (`gristmill server`, found through PREFECT_HOME, as
GRISTMILL_SERVER=auto leaves it for later commands; it is not part of the ingest's process tree).

1. First ingest: wall time, the flow body (`duration_s`), chunks written, and the peak RSS of
   the ingest's process tree (the sum of VmRSS over the process and its children, sampled every
   0.2 s; and the process's own VmHWM, read last before it exits).
2. Raw embedder: `LocalOnnxEmbedder.embed` (same default threads), warm, once over exactly the
   texts the ingest wrote, read back from Chroma; throughput ratio = raw seconds / body seconds.
   Other tenants of a shared machine move wall times by tens of percent within minutes, so CPU
   seconds are shown beside them (the raw call's, and the whole ingest process's).
3. Unchanged re-run in the same data dir: wall and body, speed-up over the first ingest, and
   its verdicts (every file's status and reason) identical to the first's.
4. Crash: an ingest into a fresh data dir killed with SIGKILL after 40 % of the first ingest's
   wall time, then resumed, then run twice more unchanged. The resume must give every file the
   clean run's verdict and leave the clean run's chunk ids; the two re-runs the clean re-run's
   counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.processes import descendants  # noqa: E402

MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
GRISTMILL = [sys.executable, "-m", "pipelines.cli"]
KILL_AT = 0.4
"""When the crashed ingest is killed, as a share of the first ingest's wall time."""
SAMPLE_S = 0.2


class TreeMemory:
    """Peak RSS of a process and its descendants, sampled from /proc in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in [self.pid, *descendants(self.pid)]:
                status = proc_status(pid)
                total += status.get("VmRSS", 0)
                if pid == self.pid:
                    self.hwm_kib = max(self.hwm_kib, status.get("VmHWM", 0))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}


def ingest(
    tree: Path, data_dir: Path, env: dict[str, str], kill_after: float | None = None
) -> dict[str, Any]:
    """One `gristmill ingest` process: its report (None when killed), wall time, memory."""
    command = [*GRISTMILL, "ingest", str(tree), "--cleanup", "full", "--json"]
    started, cpu = time.perf_counter(), children_cpu_s()
    child = subprocess.Popen(
        command,
        env={**env, "GRISTMILL_DATA_DIR": str(data_dir)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: SIGKILL reaches every child
    )
    memory = TreeMemory(child.pid)
    try:
        out, err = child.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
    wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    memory.stop()
    killed = child.returncode == -signal.SIGKILL
    if not killed and child.returncode not in (0, 1):
        raise SystemExit(f"gristmill ingest exited {child.returncode}:\n{err[-3000:]}")
    return {
        "report": None if killed else json.loads(out),
        "exit_code": child.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 1),
        "peak_tree_rss_mb": round(memory.peak_kib / 1024, 1),
        "vm_hwm_mb": round(memory.hwm_kib / 1024, 1),
    }


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What a run says about the files, apart from the work it saved by finding it done."""
    return {
        "indexed": report["added"] + report["updated"] + report["unchanged"],
        "deleted": report["deleted"],
        "skipped": {s["source"]: s["reason"] for s in report["skipped_documents"]},
        "quarantined": {q["source"]: q["reason"] for q in report["quarantine"]},
        "collection_count": report["collection_count"],
    }


def counts(report: dict[str, Any]) -> dict[str, int]:
    keys = ("added", "updated", "unchanged", "deleted", "skipped", "quarantined")
    return {key: report[key] for key in (*keys, "chunks_written", "embeddings_computed")}


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """A finished run's counts, times and memory, without its per-file lists."""
    report = run["report"]
    measured = {k: v for k, v in run.items() if k != "report"}
    return {**counts(report), **measured, "body_s": report["duration_s"]}


def check_tree_verdicts(tree: Any, report: dict[str, Any]) -> list[str]:
    """Where a run's verdicts differ from the ones the tree was built to get."""
    from tests.support.docs_tree import INDEXED

    problems = []
    if report["added"] + report["updated"] + report["unchanged"] != tree.count(INDEXED):
        problems.append(f"indexed {report['added']}+{report['unchanged']} of {tree.count(INDEXED)}")
    skipped = {s["source"]: s["reason"] for s in report["skipped_documents"]}
    if skipped != tree.skipped():
        wrong = set(skipped.items()) ^ set(tree.skipped().items())
        problems.append(f"skipped differ: {sorted(wrong)[:5]}")
    quarantined = {q["source"]: q["reason"] for q in report["quarantine"]}
    expected = tree.quarantined()
    if set(quarantined) != set(expected) or not all(
        quarantined[s].startswith(expected[s]) for s in expected
    ):
        problems.append(f"quarantined differ: {quarantined}")
    return problems


def stored(data_dir: Path, collection: str) -> tuple[list[str], set[str]]:
    """The distinct texts (as the flow embedded them) and the ids in a data dir's collection."""
    from tasks.chroma_client import open_chroma
    from tasks.settings import Settings
    from tasks.vectorstore import indexed_text

    settings = Settings(_env_file=None, data_dir=data_dir, model_dir=MODEL_DIR)
    got = open_chroma(settings).get_collection(collection).get(include=["documents", "metadatas"])
    texts = [
        indexed_text(text, metadata)  # `DocChunk.embedded_text`: the context line, then the text
        for text, metadata in zip(got["documents"] or [], got["metadatas"] or [], strict=True)
    ]
    return list(dict.fromkeys(texts)), set(got["ids"])


def raw_embed(texts: list[str]) -> dict[str, Any]:
    """One warm `embed` over `texts`: the embedder's best case."""
    from tasks.embeddings import LocalOnnxEmbedder

    embedder = LocalOnnxEmbedder(MODEL_DIR)
    embedder.embed(texts[:16])
    started, cpu = time.perf_counter(), time.process_time()
    embedder.embed(texts)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "texts": len(texts),
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu, 1),
        "threads": embedder.threads,
    }


def children_cpu_s() -> float:
    """CPU seconds (user + system, all threads) of this process's children waited for so far:
    steadier than wall time when other tenants share the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`gristmill server` on a free port for PREFECT_HOME=`home`, once it answers."""
    from pipelines.server import find

    with log.open("ab") as out:
        server = subprocess.Popen(
            [*GRISTMILL, "server", "--port", str(free_port())],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 180
    while find(home) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the Prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return server


def crash_and_resume(
    tree: Any,
    tmp: Path,
    env: dict[str, str],
    clean: dict[str, Any],
    clean_ids: set[str],
    kill_at: float,
) -> dict[str, Any]:
    """Kill an ingest into a fresh data dir, resume it, re-run it twice; compare with the
    clean run (`clean`: its first ingest and its re-run)."""
    data_dir = tmp / "data-crash"
    kill_after = kill_at * clean["first"]["wall_s"]
    killed = ingest(tree.root, data_dir, env, kill_after=kill_after)
    if killed["report"] is not None:
        raise SystemExit(f"the ingest finished in under {kill_after:.0f} s: nothing to resume")
    resume = ingest(tree.root, data_dir, env)
    reruns = [ingest(tree.root, data_dir, env) for _ in range(2)]
    _, ids = stored(data_dir, resume["report"]["collection"])
    reports = [resume["report"], *(run["report"] for run in reruns)]
    return {
        "killed_after_s": killed["wall_s"],
        "resume": figures(resume),
        "reruns": [figures(run) for run in reruns],
        "resume_verdicts_as_clean": verdicts(resume["report"]) == clean["first_verdicts"],
        "ids_as_clean": ids == clean_ids,
        "rerun_counts_as_clean": all(
            counts(run["report"]) == clean["rerun_counts"] for run in reruns
        ),
        "tree_problems": [p for report in reports for p in check_tree_verdicts(tree, report)],
    }


def run(files: int, seed: int, kill_at: float | None) -> dict[str, Any]:
    """The figures; no crash when `kill_at` is None."""
    from pipelines.server import stop
    from tests.support.docs_tree import build_tree

    with tempfile.TemporaryDirectory(prefix="docs-tree-bench-") as name:
        tmp = Path(name)
        tree = build_tree(tmp / "docs", files, seed)
        home = tmp / "prefect"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
        env["PREFECT_HOME"] = str(home)
        env["GRISTMILL_SERVER"] = "auto"
        env["GRISTMILL_MODEL_DIR"] = str(MODEL_DIR)
        server = start_server(env, home, tmp / "server.log")
        try:
            first = ingest(tree.root, tmp / "data-clean", env)
            texts, clean_ids = stored(tmp / "data-clean", first["report"]["collection"])
            raw = raw_embed(texts)
            rerun = ingest(tree.root, tmp / "data-clean", env)
            clean = {
                "first": figures(first),
                "first_verdicts": verdicts(first["report"]),
                "rerun_counts": counts(rerun["report"]),
            }
            crashed = (
                None
                if kill_at is None
                else crash_and_resume(tree, tmp, env, clean, clean_ids, kill_at)
            )
        finally:
            stop(home)
            server.wait(timeout=60)
        return {
            "files": len(tree.files),
            "tree_mb": round(tree.size_bytes / 1e6, 2),
            "first": {**clean["first"], "collection_count": first["report"]["collection_count"]},
            "first_tree_problems": check_tree_verdicts(tree, first["report"]),
            "raw": raw,
            "rerun": figures(rerun),
            "rerun_verdicts_as_first": verdicts(rerun["report"]) == clean["first_verdicts"],
            "crash": crashed,
        }


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, met) for the table; met None where there is no target."""
    first, raw, rerun, crash = r["first"], r["raw"], r["rerun"], r["crash"]
    ratio = raw["seconds"] / first["body_s"]
    body_speedup = first["body_s"] / max(rerun["body_s"], 1e-3)
    problems = r["first_tree_problems"]
    peak = max(first["peak_tree_rss_mb"], first["vm_hwm_mb"])
    found = [
        (
            "files (MB); added / skipped / quarantined, as built",
            f"{r['files']} ({r['tree_mb']} MB); {first['added']} / {first['skipped']} / "
            f"{first['quarantined']}" + (f"; {problems}" if problems else ""),
            "as built",
            not problems,
        ),
        (
            "chunks written (embeddings computed)",
            f"{first['chunks_written']} ({first['embeddings_computed']})",
            "≥ 10,000",
            first["chunks_written"] >= 10_000,
        ),
        (
            "first ingest: wall / flow body",
            f"{first['wall_s']:.1f} s / {first['body_s']:.1f} s",
            "—",
            None,
        ),
        (
            "raw embedder on the texts written (warm, same threads)",
            f"{raw['seconds']:.1f} s: {raw['texts'] / raw['seconds']:.1f} texts/s, "
            f"{raw['threads']} threads",
            "—",
            None,
        ),
        ("flow body vs raw embedder", f"**{ratio:.0%}**", "≥ 95 %", ratio >= 0.95),
        (
            "CPU seconds: raw embedder vs the whole ingest process (imports, Prefect included)",
            f"{raw['cpu_s']:.0f} vs {first['cpu_s']:.0f}: "
            f"raw is {raw['cpu_s'] / first['cpu_s']:.0%}",
            "—",
            None,
        ),
        (
            "peak RSS of the ingest process tree, sampled (its VmHWM)",
            f"**{first['peak_tree_rss_mb']:.0f} MB** ({first['vm_hwm_mb']:.0f} MB)",
            "< 1,000 MB",
            peak < 1000,
        ),
        (
            "unchanged re-run: body (wall)",
            f"{rerun['body_s']:.2f} s ({rerun['wall_s']:.1f} s): **{body_speedup:.0f}×** "
            f"({first['wall_s'] / rerun['wall_s']:.1f}× wall)",
            "≥ 40×",
            body_speedup >= 40,
        ),
        (
            "unchanged re-run: embeddings computed; verdicts as the first run's",
            f"{rerun['embeddings_computed']}; {r['rerun_verdicts_as_first']}",
            "0; True",
            rerun["embeddings_computed"] == 0 and r["rerun_verdicts_as_first"],
        ),
    ]
    if crash:
        resume = crash["resume"]
        same = crash["resume_verdicts_as_clean"] and crash["ids_as_clean"]
        same = same and crash["rerun_counts_as_clean"] and not crash["tree_problems"]
        found += [
            (
                "kill -9 after; resume: added / unchanged, embeddings computed",
                f"{crash['killed_after_s']:.0f} s; {resume['added']} / {resume['unchanged']}, "
                f"{resume['embeddings_computed']}",
                "—",
                None,
            ),
            (
                "resume: verdicts, ids as the clean run's; 2 re-runs: counts as its re-run's",
                f"{crash['resume_verdicts_as_clean']}, {crash['ids_as_clean']}; "
                f"{crash['rerun_counts_as_clean']}"
                + (f" {crash['tree_problems'][:3]}" if crash["tree_problems"] else ""),
                "identical",
                same,
            ),
        ]
    return found


def table(r: dict[str, Any]) -> str:
    lines = ["| figure | measured | target | verdict |", "| --- | --- | --- | --- |"]
    for figure, measured, target, met in rows(r):
        verdict = "—" if met is None else "met" if met else "**not met**"
        lines.append(f"| {figure} | {measured} | {target} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="documents in the tree")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-crash", action="store_true", help="no kill -9 and resume")
    parser.add_argument(
        "--kill-at", type=float, default=KILL_AT, help="share of the first ingest's wall time"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    from tasks.model_files import missing_files, provision_embedding_model

    if missing_files(MODEL_DIR):
        provision_embedding_model(MODEL_DIR)
    started = time.perf_counter()
    figures = run(args.files, args.seed, None if args.skip_crash else args.kill_at)
    print(table(figures))
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
