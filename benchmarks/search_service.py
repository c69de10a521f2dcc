"""The search service and a cold search (issue 13): warm `POST /query` latency of `gristmill api`
over HTTP at 10k and 100k chunks, and the wall of a cold `gristmill query` against T0.

    python benchmarks/search_service.py [--sizes 10000,100000] [--queries 200] [--runs 5]
                                        [--text meetings|sample] [--meetings DIR]

- Corpora: chunks of 220 words (the size of a 300-token document chunk), written as `gristmill
  ingest` writes them (Chroma + the lexical index) into a temporary data dir. `--text meetings`
  (the default): windows from random places in the QMSum validation meetings
  (../shared/datasets/qmsum-val: real speech, a real vocabulary), queried with the questions
  QMSum asks of them; `--text sample`: words drawn at random from the sample documents (a
  1,125-word vocabulary: nearly every query word is in nearly every chunk, BM25's worst case),
  queried with their sentences. The vectors are inserted directly: the real embedder runs at a
  few chunks per second on this 2-core machine, hours for 100k. Each vector is a mix of two of
  128 real MiniLM vectors of such chunks plus noise, so the index holds clustered vectors like
  real ones, not uniform noise.
- Warm `/query`: `gristmill api` started as a subprocess on the corpus; 20 queries to warm up,
  then QUERIES queries one after another over one keep-alive httpx client (k=5, hybrid ranking:
  the embedder, Chroma's nearest 100 ids, BM25's best 100, fused, the 5 kept fetched). The
  same queries in-process (`DocumentSearch.query`), alternating with the HTTP ones, show the
  HTTP share; then the parts alone (embed the query, Chroma's nearest 100 ids, BM25's best
  100 from the lexical index, fetching the 5 kept chunks).
- Cold `gristmill query TEXT --json` on the first corpus, a fresh process each run, against
  T0 = `python -c "import prefect, chromadb"`, the two alternating, RUNS each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli_startup import wall  # noqa: E402
from tasks.embeddings import build_embedder  # noqa: E402
from tasks.retrieval import open_store_for_writing  # noqa: E402
from tasks.settings import Settings  # noqa: E402
from tests.support import prefect_server  # noqa: E402
from tests.support.chroma_process import free_port  # noqa: E402

MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
COLLECTION = "bench"
WORDS_PER_CHUNK = 220
POOL = 128
WRITE_BATCH = 5000


QMSUM = REPO.parent / "shared" / "datasets" / "qmsum-val"


def sample_text() -> tuple[list[str], list[str]]:
    """The sample documents' words, and their sentences (the queries)."""
    text = " ".join(p.read_text(errors="ignore") for p in (REPO / "data/documents").rglob("*.md"))
    words = re.findall(r"[A-Za-z][A-Za-z'-]+", text)
    sentences = [
        " ".join(s.split())
        for s in re.split(r"(?<=[.?!])\s+", text)
        if 25 <= len(" ".join(s.split())) <= 120 and not s.lstrip().startswith(("#", "|", "-"))
    ]
    return words, sentences


def meeting_text(folder: Path) -> tuple[list[str], list[str]]:
    """QMSum validation meetings: the transcripts' words in order, and the questions asked of
    them (real text with a real vocabulary; chunks are windows of it)."""
    import json

    words: list[str] = []
    questions: list[str] = []
    for path in sorted(folder.glob("*.json")):
        meeting = json.loads(path.read_text())
        for turn in meeting["meeting_transcripts"]:
            words += turn["content"].split()
        questions += [q["query"] for q in meeting["specific_query_list"]]
    return words, questions


def build_corpus(
    data_dir: Path, size: int, words: list[str], windows: bool, seed: int = 13
) -> Settings:
    """`size` synthetic chunks in collection COLLECTION under `data_dir` (see the docstring):
    with `windows`, runs of WORDS_PER_CHUNK words from random places in `words`, else words
    drawn at random from them."""
    rng = random.Random(seed)

    def chunk_text() -> str:
        if not windows:
            return " ".join(rng.choices(words, k=WORDS_PER_CHUNK))
        start = rng.randrange(len(words) - WORDS_PER_CHUNK)
        return " ".join(words[start : start + WORDS_PER_CHUNK])

    settings = Settings(data_dir=data_dir, model_dir=MODEL_DIR, collection=COLLECTION)
    embedder = build_embedder(settings)
    pool_texts = [chunk_text() for _ in range(POOL)]
    pool = np.asarray(embedder.embed(pool_texts), dtype=np.float32)
    generator = np.random.default_rng(seed)
    store = open_store_for_writing(settings, embedder)
    for start in range(0, size, WRITE_BATCH):
        count = min(WRITE_BATCH, size - start)
        texts = [chunk_text() for _ in range(count)]
        mix = generator.random((count, 1), dtype=np.float32)
        first = pool[generator.integers(0, POOL, count)]
        second = pool[generator.integers(0, POOL, count)]
        noise = generator.normal(0, 0.03, (count, pool.shape[1])).astype(np.float32)
        vectors = mix * first + (1 - mix) * second + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        numbers = range(start, start + count)
        ids = [hashlib.sha256(f"bench-{n}".encode()).hexdigest() for n in numbers]
        metadatas: list[dict[str, str | int | float | bool]] = [
            {"source": f"doc-{n // 20:05d}.md", "chunk_index": n % 20, "heading": f"Part {n}"}
            for n in numbers
        ]
        store.upsert(ids, vectors, texts, metadatas)
    assert store.count() == size
    return settings


def user_env(data_dir: Path) -> dict[str, str]:
    """A user's environment (`prefect_server.user_env`) on the built collection."""
    return prefect_server.user_env(
        data_dir, GRISTMILL_MODEL_DIR=str(MODEL_DIR), GRISTMILL_COLLECTION=COLLECTION
    )


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def warm_latency(data_dir: Path, queries: list[str]) -> dict[str, float]:
    """p50/p95 (ms) of `POST /query` against a `gristmill api` subprocess, and of the same
    search in this process, the two alternating query by query (the machine's load then
    weighs on both alike)."""
    import httpx

    from tasks.search import DocumentSearch

    port = free_port()
    log = data_dir.parent / "api.log"
    with log.open("w") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "api", "--port", str(port)],
            cwd=REPO,
            env=user_env(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    settings = Settings(data_dir=data_dir, model_dir=MODEL_DIR, collection=COLLECTION)
    search = DocumentSearch(settings)
    search.warm()
    http, inside = [], []
    try:
        deadline = time.monotonic() + 300
        while True:
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gristmill api did not start:\n{log.read_text()}")
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=60) as client:
            for text in queries[:20]:
                client.post("/query", json={"text": text, "k": 5}).raise_for_status()
                search.query(text, 5)
            for text in queries:
                started = time.perf_counter()
                response = client.post("/query", json={"text": text, "k": 5})
                http.append(time.perf_counter() - started)
                response.raise_for_status()
                assert len(response.json()["hits"]) == 5
                started = time.perf_counter()
                search.query(text, 5)
                inside.append(time.perf_counter() - started)
    finally:
        service.terminate()
        service.wait(timeout=60)
    parts: dict[str, list[float]] = {
        "embed": [],
        "dense 100 ids": [],
        "bm25 100": [],
        "fetch 5": [],
    }
    store = search.store(None)
    assert store.lexical is not None
    for text in queries:
        started = time.perf_counter()
        vector = search.embedder.embed([text])[0]
        parts["embed"].append(time.perf_counter() - started)
        started = time.perf_counter()
        dense = store.nearest_ids(vector, k=100)
        parts["dense 100 ids"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.lexical.search(text, 100)
        parts["bm25 100"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.hits(dense[:5], vector)
        parts["fetch 5"].append(time.perf_counter() - started)
    figures = {
        "http p50": 1000 * percentile(http, 0.5),
        "http p95": 1000 * percentile(http, 0.95),
        "in-process p50": 1000 * percentile(inside, 0.5),
        "in-process p95": 1000 * percentile(inside, 0.95),
    }
    for name, values in parts.items():
        figures[f"part {name} p50"] = 1000 * percentile(values, 0.5)
    return figures


def cold_query(data_dir: Path, text: str, runs: int) -> tuple[list[float], list[float]]:
    env = user_env(data_dir)
    floor = [sys.executable, "-c", "import prefect, chromadb"]
    query = [sys.executable, "-m", "pipelines.cli", "query", text, "--json"]
    wall(floor, env)
    wall(query, env)  # warm-up: the OS file cache
    t0, cold = [], []
    for _ in range(runs):
        t0.append(wall(floor, env))
        cold.append(wall(query, env))
    return t0, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5, help="cold query runs (0: none)")
    parser.add_argument(
        "--text",
        choices=["meetings", "sample"],
        default="meetings",
        help="meetings: chunks are windows of the QMSum meetings, queries their questions; "
        "sample: words drawn from the sample documents, queries their sentences",
    )
    parser.add_argument("--meetings", type=Path, default=QMSUM)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    windows = args.text == "meetings"
    if windows and not args.meetings.is_dir():
        raise SystemExit(f"no QMSum meetings at {args.meetings}: use --text sample")
    words, sentences = meeting_text(args.meetings) if windows else sample_text()
    rng = random.Random(7)
    queries = [rng.choice(sentences) for _ in range(args.queries)]
    work = Path(tempfile.mkdtemp(prefix="gristmill-search-bench-"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"commit {commit}; {args.text} text ({len(set(words)):,} distinct words); "
        f"{len(queries)} queries, k=5; load average {os.getloadavg()[0]:.1f}"
    )
    try:
        for number, size in enumerate(sizes):
            data_dir = work / f"corpus-{size}" / "data"
            started = time.monotonic()
            build_corpus(data_dir, size, words, windows)
            print(f"\n{size:,} chunks (built in {time.monotonic() - started:.0f} s)")
            for name, value in warm_latency(data_dir, queries).items():
                print(f"  /query {name:<16} {value:8.1f} ms")
            if number == 0 and args.runs > 0:
                t0, cold = cold_query(data_dir, queries[0], args.runs)
                ratio = statistics.median(c / t for c, t in zip(cold, t0, strict=True))
                print(f"  T0 import prefect, chromadb   median {statistics.median(t0):.2f} s")
                print(f"  cold gristmill query --json   median {statistics.median(cold):.2f} s")
                print(f"  cold query / T0 (pairwise median) {ratio:.2f}")
                print(f"    runs: T0 {[round(t, 2) for t in t0]}")
                print(f"          query {[round(c, 2) for c in cold]}")
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
