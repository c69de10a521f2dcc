"""Ingest speed, re-ingest speed and memory of `ingest_documents` (issue 3, section 7).

    python benchmarks/ingest_speed.py [--documents 100] [--rounds 2] [--json]

The corpus is generated, seeded: `--documents` files of Markdown, plain text, HTML and JSONL
records (2:1:1:1) whose headings and sentences are drawn from the sample corpus in
data/documents, so the text reads like the samples but every chunk is distinct (no embedding is
saved by deduplication). Everything runs in a temp dir: a fresh GRISTMILL_DATA_DIR with an
on-disk Chroma, and a PREFECT_HOME of its own (a temporary Prefect API server, as a CLI run
without PREFECT_API_URL gets). The embedder is the real one: int8 all-MiniLM-L6-v2 on
onnxruntime, 2 threads (`make setup` provisions it; the script does too if it is missing).

1. Throughput, as ratios in one run. "Raw" is `LocalOnnxEmbedder.embed` called once over exactly
   the distinct chunk texts the flow writes (the script checks they are the same set), with a
   warm session: the embedder's best case. It is timed before and after the flow and averaged,
   because other work on a shared 2-core machine moves absolute speed a lot within minutes.
   "Flow body" is the flow's own report time (`IngestReport.duration_s`: load, chunk, quality
   checks, embed, upsert, delete stale, verify), with a new embedder that loads its model inside.
   "Whole flow call" adds the flow run's start and end (creating the run, the artifacts, the
   ~1 s exit), with the API server already up: the first flow of the process, which starts the
   server and imports Prefect, GX and Chroma, is a warm-up on 3 other documents, reported apart.
2. Re-ingesting the unchanged corpus with the same flow (a new embedder, as a new CLI run would
   have): embeddings computed, from the flow's report, and speed-up over the first ingest.
3. Memory: the flow on a tenth of the corpus and on the whole corpus, each in a fresh
   subprocess that reads its own peak RSS at the end (VmHWM in /proc/self/status, not
   `ru_maxrss`: on Linux that also counts the parent's RSS at the fork, ~1.8 GB here);
   "after imports" is the child's peak before the flow starts.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
FORMATS = ("md", "txt", "md", "html", "jsonl")


def write_corpus(root: Path, documents: int, seed: int = 0) -> int:
    """`documents` files under `root` in ten folders; returns the bytes written."""
    from tests.support.docs_tree import sample_pools

    sentences, headings = sample_pools(code_lines=True)
    rng = random.Random(seed)
    total = 0
    for number in range(documents):
        kind = FORMATS[number % len(FORMATS)]
        title = f"{rng.choice(headings)} {number}"
        sections = [
            (
                rng.choice(headings),
                [
                    " ".join(rng.sample(sentences, rng.randint(2, 7)))
                    for _ in range(rng.randint(1, 4))
                ],
            )
            for _ in range(rng.randint(2, 6))
        ]
        if kind == "md":
            body = "\n\n".join(f"## {h}\n\n" + "\n\n".join(ps) for h, ps in sections)
            text = f"# {title}\n\n{body}\n"
        elif kind == "txt":
            text = f"{title}\n\n" + "\n\n".join(p for _, ps in sections for p in ps) + "\n"
        elif kind == "html":
            body = "".join(
                f"<h2>{html.escape(h)}</h2>" + "".join(f"<p>{html.escape(p)}</p>" for p in ps)
                for h, ps in sections
            )
            text = (
                f"<html><head><title>{html.escape(title)}</title></head>"
                f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
            )
        else:
            text = "".join(
                json.dumps({"title": h, "text": "\n\n".join(ps), "tags": ["generated"]}) + "\n"
                for h, ps in sections
            )
        folder = root / f"part-{number % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc-{number:05d}.{kind}").write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
    return total


def settings_for(data_dir: Path) -> Any:
    from tasks.settings import Settings

    return Settings(_env_file=None, data_dir=data_dir, model_dir=MODEL_DIR)


def run_flow(docs: Path, settings: Any) -> tuple[Any, float, float]:
    """One `ingest_documents` run with a new local embedder; (report, wall s, CPU s)."""
    from pipelines.ingest import ingest_documents
    from pipelines.run_context import run_context
    from tasks.embeddings import LocalOnnxEmbedder
    from tasks.ingestion import IngestReport

    wall, cpu = time.perf_counter(), time.process_time()
    with run_context(settings=settings, embedder=LocalOnnxEmbedder(MODEL_DIR)):
        state = ingest_documents(paths=[str(docs)], return_state=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report = state.result(raise_on_failure=False)
    if not isinstance(report, IngestReport) or report.quarantined:
        raise SystemExit(f"the ingest run failed: {state.message}")
    return report, wall, cpu


def distinct_chunk_texts(docs: Path, settings: Any) -> list[str]:
    """The distinct texts the flow will embed: its own loader and chunker, its own budget."""
    from tasks.documents import discover_documents
    from tasks.embeddings import LocalOnnxEmbedder
    from tasks.ingestion.prepare import chunk_budget, prepare_documents

    counter = LocalOnnxEmbedder(MODEL_DIR)
    prepared, quarantine, _ = prepare_documents(
        discover_documents([docs]),
        counter,
        max_tokens=chunk_budget(settings.doc_chunk_tokens, counter),
        overlap_tokens=settings.doc_chunk_overlap_tokens,
    )
    assert not quarantine, quarantine
    return list(dict.fromkeys(c.text for p in prepared for c in p.chunks))


def time_raw(embedder: Any, texts: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `embed` call over `texts`."""
    wall, cpu = time.perf_counter(), time.process_time()
    embedder.embed(texts)
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(tmp: Path, documents: int, rounds: int) -> dict[str, Any]:
    """Raw, then `rounds` times (flow on a fresh store, raw), then a re-ingest of round 1."""
    from tasks.chroma_client import open_chroma
    from tasks.embeddings import LocalOnnxEmbedder
    from tasks.vectorstore import ChunkStore

    docs, warm_docs = tmp / "corpus", tmp / "warm-up-corpus"
    corpus_bytes = write_corpus(docs, documents)
    write_corpus(warm_docs, 3, seed=1)
    texts = distinct_chunk_texts(docs, settings_for(tmp / "unused"))

    _, warm_wall, _ = run_flow(warm_docs, settings_for(tmp / "warm-up-data"))

    raw = LocalOnnxEmbedder(MODEL_DIR)
    raw.embed(texts[:16])  # load the session; raw is the warm, steady-state case
    raws = [time_raw(raw, texts)]
    flows = []
    for number in range(rounds):
        settings = settings_for(tmp / f"data-{number}")
        report, wall, cpu = run_flow(docs, settings)
        raws.append(time_raw(raw, texts))
        store = ChunkStore(open_chroma(settings), settings.collection, raw.name, raw.dimension)
        written = store.collection.get(include=["documents"])["documents"] or []
        assert set(written) == set(texts) and report.embeddings_computed == len(texts), (
            "the flow embedded other texts than the raw run"
        )
        flows.append(
            {"body_s": report.duration_s, "call_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        )
    first = settings_for(tmp / "data-0")
    again, again_wall, _ = run_flow(docs, first)
    return {
        "documents": documents,
        "corpus_mb": round(corpus_bytes / 1e6, 2),
        "chunks": len(texts),
        "warm_up_wall_s": round(warm_wall, 2),
        "raw_s": [round(wall, 2) for wall, _ in raws],
        "raw_cpu_s": [round(cpu, 2) for _, cpu in raws],
        "flows": flows,
        "reingest_embeddings_computed": again.embeddings_computed,
        "reingest_chunks_written": again.chunks_written,
        "reingest_unchanged": again.unchanged,
        "reingest_body_s": again.duration_s,
        "reingest_call_s": round(again_wall, 2),
    }


def peak_rss_mb() -> float:
    """This process image's peak RSS: VmHWM, else ru_maxrss (which on Linux also counts the
    parent's RSS at fork, so a child of a large process would report the parent's peak)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kib = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(kib.group(1)) / 1024 if kib else 0.0


def memory_child(docs: Path, data_dir: Path) -> None:
    """Run in a fresh process: ingest `docs` into `data_dir`, print peak RSS as JSON."""
    import pipelines.ingest  # noqa: F401  (imports before the baseline reading)

    after_imports = peak_rss_mb()
    report, wall, _ = run_flow(docs, settings_for(data_dir))
    print(
        json.dumps(
            {
                "chunks": report.chunks_written,
                "after_imports_mb": round(after_imports, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "wall_s": round(wall, 2),
            }
        )
    )


def memory(tmp: Path, documents: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, count in (("small", max(1, documents // 10)), ("large", documents)):
        docs = tmp / f"memory-{label}"
        write_corpus(docs, count, seed=2)
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(docs), str(tmp / f"mem-{label}")],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"memory run failed:\n{out.stderr[-3000:]}")
        results[label] = {"documents": count, **json.loads(out.stdout.strip().splitlines()[-1])}
    results["ratio"] = round(results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"], 3)
    return results


def table(t: dict[str, Any], m: dict[str, Any]) -> str:
    chunks = t["chunks"]
    raws, raw_cpus, flows = t["raw_s"], t["raw_cpu_s"], t["flows"]
    # Each flow against the mean of the raw runs just before and after it.
    raw_means = [(raws[i] + raws[i + 1]) / 2 for i in range(len(flows))]
    raw_cpu = sum(raw_cpus) / len(raw_cpus)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    def ratios(key: str) -> tuple[str, float]:
        each = [raw / flow[key] for raw, flow in zip(raw_means, flows, strict=True)]
        overall = sum(raw_means) / sum(flow[key] for flow in flows)
        detail = " / ".join(f"{r:.0%}" for r in each)
        return f"**{overall:.0%} of raw**" + (
            f" (rounds: {detail})" if len(each) > 1 else ""
        ), overall

    def seconds(key: str) -> str:
        return " / ".join(f"{flow[key]:.1f}" for flow in flows) + " s"

    def of_raw(label: str, key: str) -> tuple[str, str, str, str]:
        """The row of flow timing `key` as a share of raw `embed` (target: 85 % or more)."""
        text, ratio = ratios(key)
        return (label, f"{seconds(key)}: {text}", "≥ 85 %", verdict(ratio >= 0.85))

    def reingest(label: str, key: str) -> tuple[str, str, str, str]:
        """The row of the unchanged re-ingest's timing `key` against the first flow's (target:
        20 times faster or more)."""
        first, again = flows[0][key], t[f"reingest_{key}"]
        speedup = first / again
        measured = f"{again:.2f} s vs {first:.1f} s: **{speedup:.0f}× faster**"
        return (label, measured, "≥ 20×", verdict(speedup >= 20))

    cpu_ratio = raw_cpu / (sum(flow["cpu_s"] for flow in flows) / len(flows))
    small, large = m["small"], m["large"]
    rows = [
        ("figure", "measured", "target", "verdict"),
        ("---", "---", "---", "---"),
        (
            "raw `embed` over the same chunks (before, between, after the flows)",
            " / ".join(f"{r:.1f}" for r in raws)
            + f" s = {chunks / max(raws):.1f}–{chunks / min(raws):.1f} chunks/s",
            "—",
            "—",
        ),
        of_raw("flow body: load, chunk, checks, embed, upsert, verify", "body_s"),
        of_raw("whole flow call: + flow-run start and end", "call_s"),
        (
            "CPU seconds (this process): raw vs whole flow call",
            f"{raw_cpu:.1f} vs {seconds('cpu_s')}: raw is {cpu_ratio:.0%}",
            "—",
            "—",
        ),
        (
            "first flow of the process (API server start, imports; 3 documents)",
            f"{t['warm_up_wall_s']:.1f} s",
            "—",
            "—",
        ),
        (
            "re-ingest unchanged: embeddings computed / chunks written",
            f"{t['reingest_embeddings_computed']} / {t['reingest_chunks_written']} "
            f"({t['reingest_unchanged']} documents unchanged)",
            "0",
            verdict(t["reingest_embeddings_computed"] == 0 and t["reingest_chunks_written"] == 0),
        ),
        reingest("re-ingest unchanged: flow body", "body_s"),
        reingest("re-ingest unchanged: whole flow call", "call_s"),
        (
            f"peak RSS, {small['documents']} → {large['documents']} documents "
            f"({small['chunks']} → {large['chunks']} chunks), fresh processes",
            f"{small['peak_rss_mb']:.0f} → {large['peak_rss_mb']:.0f} MB: "
            f"**{m['ratio']:.2f}×** (after imports: {small['after_imports_mb']:.0f} MB)",
            "< 1.5×",
            verdict(m["ratio"] < 1.5),
        ),
    ]
    header = (
        f"{t['documents']} documents ({t['corpus_mb']} MB), {chunks} distinct chunks, each "
        f"embedded once per flow run; {len(flows)} flow round(s)\n\n"
    )
    return header + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="flow runs, each between raw runs")
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    parser.add_argument("--memory-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    from tasks.model_files import missing_files, provision_embedding_model

    if missing_files(MODEL_DIR):
        provision_embedding_model(MODEL_DIR)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as name:
        tmp = Path(name)
        # Before Prefect is imported; the memory children inherit them.
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "results")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.pop("PREFECT_API_URL", None)
        started = time.perf_counter()
        figures = throughput(tmp, args.documents, max(1, args.rounds))
        mem = memory(tmp, args.documents)
        print(table(figures, mem))
        print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
        if args.json:
            print(json.dumps({"throughput": figures, "memory": mem}))


if __name__ == "__main__":
    main()
