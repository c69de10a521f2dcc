"""Whole-collection retrieval on QMSum validation: what a user searching everything gets.

    python -m benchmarks.retrieval_collection [DATA_DIR] [--json]

All 35 meetings go into ONE collection, ingested the way `gristmill ingest` does it (the flow's
steps, on-disk Chroma, the local embedder, the collection's lexical index), twice: once from
plain "Speaker: text" files (`<meeting>.txt`) and once from JSON turn lists (`<meeting>.json`).
Every specific query is run against the whole collection, with no source filter, through
`query_chunks` exactly as `gristmill query` runs it.

A hit at k: one of the top k chunks comes from the query's own meeting and holds >= 80 % of the
distinct words of one of its relevant turns (turns of at least MIN_TURN_WORDS words; a query
whose relevant turns are all shorter uses its longest one). The rule reads only chunk text, so
both file formats are scored alike. recall@k is the share of queries hit. In the same run, on
the same chunks:
- `gristmill`: `query_chunks` (the embedder's 100 nearest and the lexical index's 100 best over
  the whole collection, fused by reciprocal rank);
- `candidates-only`: the previous hybrid (the embedder's nearest re-ranked by BM25 among
  themselves), i.e. `query_chunks` without the lexical index;
- `MiniLM`: the embedder alone (k nearest);
- `BM25 (FTS5)`: the lexical index alone; `BM25 (bm25s)`: bm25s over the whole collection
  (Snowball stems, English stop words), the alternative index that was measured against it;
- `random`: k chunks drawn at random, scored by its exact expectation.
Margins over each baseline come with 95 % paired-bootstrap intervals. The per-meeting figure
(each query searched only among its own meeting's chunks, `{"source": ...}` filter) is the
second line, as benchmarks/retrieval_quality.py used to report it.

Chunk context (issue 14 item 3): each format is ingested twice in the same run, with the context
line each chunk is embedded and indexed with (`Settings.doc_chunk_context`, opt-in: "Meeting:
<file stem> · Speakers: <the chunk's speakers>") and without it (the default: the chunks of the
tree before it); every system is scored on both, with paired-bootstrap intervals of "context
minus none" per query, and the same margins on the two halves of the split (meetings sorted by
name; odd = 1st, 3rd, ...), so a choice can be checked to hold on both. The hit rule reads the
stored chunk text, which is the same with and without the line.

DATA_DIR defaults to ../shared/datasets/qmsum-val next to the repository; when it is absent the
benchmark says so and exits 0. Nothing is written into the project.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.retrieval_quality import (  # noqa: E402  (the repo root is on sys.path now)
    DEFAULT_DATA,
    MODEL_DIR,
    bootstrap_ci,
    print_recall_table,
    random_hit,
)

KS = (5, 10)
COVERAGE = 0.8
MIN_TURN_WORDS = 5
_MARKER = re.compile(r"\{\w+\}")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SYSTEMS = {
    "gristmill": "gristmill (`query_chunks`: MiniLM 100 + whole-collection BM25 100, fused)",
    "candidates": "candidates-only hybrid (MiniLM nearest re-ranked by BM25 among them)",
    "dense": "MiniLM alone",
    "fts5": "BM25 over the whole collection (SQLite FTS5, the index gristmill keeps)",
    "bm25s": "BM25 over the whole collection (bm25s, the alternative measured)",
    "random": "random chunks (expected)",
    "per_meeting": "gristmill within the query's own meeting (source filter)",
}


def words(text: str) -> set[str]:
    return set(_WORD.findall(_MARKER.sub(" ", text.lower())))


def relevant_turns(query: dict[str, Any], turns: list[dict[str, Any]]) -> list[set[str]]:
    """The word sets of the query's relevant turns that are long enough to identify a chunk."""
    found = []
    for first, last in query["relevant_text_span"]:
        for t in range(int(first), min(int(last), len(turns) - 1) + 1):
            turn_words = words(str(turns[t].get("content") or ""))
            if turn_words:
                found.append(turn_words)
    long_enough = [w for w in found if len(w) >= MIN_TURN_WORDS]
    return long_enough or sorted(found, key=len)[-1:]


def is_hit(source: str, text: str, meeting: str, turns: list[set[str]]) -> bool:
    if Path(source).stem != meeting:
        return False
    chunk = words(text)
    return any(len(turn & chunk) >= COVERAGE * len(turn) for turn in turns)


def write_meetings(folder: Path, meetings: dict[str, Any], fmt: str) -> None:
    folder.mkdir(parents=True)
    for stem, meeting in meetings.items():
        turns = meeting["meeting_transcripts"]
        if fmt == "json":
            text = json.dumps(turns, ensure_ascii=False)
        else:
            text = "\n".join(
                f"{turn['speaker']}: {turn['content']}" for turn in turns if turn.get("content")
            )
        (folder / f"{stem}.{fmt}").write_text(text, "utf-8")


def bm25s_ranker(chunks: dict[str, tuple[str, str]]) -> Callable[[str, int], list[str]]:
    import bm25s
    import Stemmer

    ids = list(chunks)
    stemmer = Stemmer.Stemmer("english")
    corpus = bm25s.tokenize(
        [chunks[i][1] for i in ids], stopwords="en", stemmer=stemmer, show_progress=False
    )
    retriever = bm25s.BM25(k1=1.2, b=0.75)
    retriever.index(corpus, show_progress=False)

    def rank(text: str, k: int) -> list[str]:
        query = bm25s.tokenize(
            [text], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
        )
        known = [token for token in query[0] if token in corpus.vocab]
        if not known:
            return []
        scores = retriever.get_scores(known)
        order = sorted(range(len(ids)), key=lambda i: -scores[i])[:k]
        return [ids[i] for i in order if scores[i] > 0]

    return rank


def measure(fmt: str, meetings: dict[str, Any], tmp: Path, context: bool = True) -> dict[str, Any]:
    import numpy as np

    from tasks.chroma_client import open_chroma
    from tasks.documents import discover_documents
    from tasks.embeddings import LocalOnnxEmbedder
    from tasks.ingestion import ingest_files
    from tasks.retrieval import open_store_for_writing, query_chunks
    from tasks.settings import Settings
    from tasks.vectorstore import ChunkStore

    folder = tmp / fmt / "meetings"
    if not folder.exists():
        write_meetings(folder, meetings, fmt)
    settings = Settings(
        _env_file=None,
        data_dir=tmp / fmt / f"data-{context}",
        model_dir=MODEL_DIR,
        doc_chunk_context=context,
    )
    embedder = LocalOnnxEmbedder(MODEL_DIR)
    name = "qmsum-val"
    store = open_store_for_writing(settings, embedder, name)
    started = time.perf_counter()
    report = ingest_files(discover_documents([folder]), store, embedder, settings)
    ingest_s = time.perf_counter() - started
    if report.quarantined:
        raise SystemExit(f"quarantined: {report.quarantine}")
    lexical = store.lexical
    assert lexical is not None and lexical.count() == store.count(), "index out of step"
    ids = sorted(store.all_ids())
    chunks = {chunk_id: (source, text) for chunk_id, source, text in store.texts(ids)}
    indexed = {chunk_id: (source, text) for chunk_id, source, text in store.texts(
        ids, indexed=True)}  # fmt: skip
    bm25s_rank = bm25s_ranker(indexed)
    candidates_only = ChunkStore(
        open_chroma(settings), name, embedder.name, embedder.dimension, create=False
    )

    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    top = max(KS)
    for position, (stem, meeting) in enumerate(meetings.items()):
        turns = meeting["meeting_transcripts"]
        source = next(s for s, _ in chunks.values() if Path(s).stem == stem)
        for number, query in enumerate(meeting["specific_query_list"]):
            wanted = relevant_turns(query, turns)
            if not wanted:
                continue
            text = query["query"]

            def hits_of(ids: list[str], meeting: str = stem, wanted: list = wanted) -> list[bool]:
                return [is_hit(*chunks[i], meeting, wanted) for i in ids]

            began = time.perf_counter()
            ours = [hit.id for hit in query_chunks(text, store, embedder, top)]
            seconds.append(time.perf_counter() - began)
            vector = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
            ranked = {
                "gristmill": ours,
                "candidates": [h.id for h in query_chunks(text, candidates_only, embedder, top)],
                "dense": [h.id for h in store.query(vector, k=top)],
                "fts5": [chunk_id for chunk_id, _ in lexical.search(text, top)],
                "bm25s": bm25s_rank(text, top),
                "per_meeting": [
                    h.id for h in query_chunks(text, store, embedder, top, {"source": source})
                ],
            }
            relevant = sum(is_hit(s, t, stem, wanted) for s, t in chunks.values())
            row: dict[str, Any] = {
                "meeting": stem,
                "query": number,
                "half": "odd" if position % 2 == 0 else "even",
            }
            for system, ids in ranked.items():
                found = hits_of(ids)
                for k in KS:
                    row[f"{system}@{k}"] = float(any(found[:k]))
            for k in KS:
                row[f"random@{k}"] = random_hit(len(chunks), relevant, k)
            # Which meeting the ranking finds first, whatever the chunk: a diagnostic of how
            # often the query alone tells its meeting apart from the other 34.
            meetings_found = [Path(chunks[i][0]).stem for i in ours[:5]]
            row["own_meeting_first"] = float(meetings_found[0] == stem)
            row["own_meeting_in_top5"] = float(stem in meetings_found)
            rows.append(row)
    return {
        "format": fmt,
        "context": context,
        "rows": rows,
        "chunks": len(chunks),
        "queries": len(rows),
        "ingest_s": round(ingest_s, 1),
        "query_ms_median": round(1000 * statistics.median(seconds), 1),
        "query_ms_p95": round(1000 * sorted(seconds)[int(0.95 * (len(seconds) - 1))], 1),
        "recall": {
            f"{s}@{k}": round(statistics.fmean(r[f"{s}@{k}"] for r in rows), 3)
            for s in SYSTEMS
            for k in KS
        },
        "own_meeting": {
            key: round(statistics.fmean(r[key] for r in rows), 3)
            for key in ("own_meeting_first", "own_meeting_in_top5")
        },
        "halves": {
            half: {
                f"{s}@{k}": round(statistics.fmean(r[f"{s}@{k}"] for r in part), 3)
                for s in ("gristmill", "per_meeting")
                for k in KS
            }
            for half in ("odd", "even")
            if (part := [r for r in rows if r["half"] == half])
        },
        "margin_ci95": {
            f"gristmill-{base}@{k}": bootstrap_ci(
                [r[f"gristmill@{k}"] - r[f"{base}@{k}"] for r in rows]
            )
            for base in ("candidates", "dense", "fts5", "bm25s", "random")
            for k in KS
        },
    }


CONTEXT_SYSTEMS = ("gristmill", "per_meeting", "dense", "fts5")


def context_margins(with_context: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """Per system and k: recall with the context line minus without, its 95 % paired-bootstrap
    interval over queries, and the margin on each half of the split."""
    before = {(r["meeting"], r["query"]): r for r in without["rows"]}
    pairs = [(r, before[(r["meeting"], r["query"])]) for r in with_context["rows"]]
    margins: dict[str, Any] = {}
    for system in CONTEXT_SYSTEMS:
        for k in KS:
            key = f"{system}@{k}"
            diffs = [a[key] - b[key] for a, b in pairs]
            margins[key] = {
                "margin": round(statistics.fmean(diffs), 3),
                "ci95": bootstrap_ci(diffs),
                **{
                    half: round(statistics.fmean(a[key] - b[key] for a, b in part), 3)
                    for half in ("odd", "even")
                    if (part := [(a, b) for a, b in pairs if a["half"] == half])
                },
            }
    return margins


def print_context(fmt: str, margins: dict[str, Any], without: dict[str, Any]) -> None:
    recall = without["recall"]
    print(f"\n{fmt} files, context line minus none ({without['chunks']} chunks without it):")
    print("| system | @5 without | @5 margin [95 %] (odd, even) | @10 without | @10 margin |")
    print("| --- | --- | --- | --- | --- |")
    for system in CONTEXT_SYSTEMS:
        cells = []
        for k in KS:
            m = margins[f"{system}@{k}"]
            low, high = m["ci95"]
            cells += [
                f"{recall[f'{system}@{k}']:.3f}",
                f"{m['margin']:+.3f} [{low:+.3f}, {high:+.3f}] ({m['odd']:+.3f}, {m['even']:+.3f})",
            ]
        print(f"| {system} | " + " | ".join(cells) + " |")


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\n{report['format']} files: {report['chunks']} chunks in one collection, "
        f"{report['queries']} queries; ingest {report['ingest_s']} s; gristmill query "
        f"{report['query_ms_median']} ms median, {report['query_ms_p95']} ms p95 (warm)\n"
    )
    bases = ("candidates", "dense", "fts5", "bm25s", "random")
    print_recall_table(report, SYSTEMS, bases, "gristmill minus {base}")
    own = report["own_meeting"]
    print(
        f"gristmill's first chunk is from the query's own meeting for "
        f"{own['own_meeting_first']:.3f} of queries; one of its top 5 for "
        f"{own['own_meeting_in_top5']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--formats", default="txt,json", help="comma-separated: txt, json")
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="only the default ingest (no context line), without the comparison",
    )
    args = parser.parse_args()
    if not args.data_dir.is_dir() or not any(args.data_dir.glob("*.json")):
        print(f"QMSum data not found at {args.data_dir}: skipping (nothing measured)")
        return
    from tasks.model_files import missing_files, provision_embedding_model

    if missing_files(MODEL_DIR):
        provision_embedding_model(MODEL_DIR)
    meetings = {
        path.stem: json.loads(path.read_text("utf-8"))
        for path in sorted(args.data_dir.glob("*.json"))
    }
    reports = []
    with tempfile.TemporaryDirectory(prefix="retrieval-collection-") as name:
        for fmt in args.formats.split(","):
            # --no-compare: only the default chunks (no context line), the figure that counts
            report = measure(fmt.strip(), meetings, Path(name), context=not args.no_compare)
            if not args.no_compare:
                without = measure(fmt.strip(), meetings, Path(name), context=False)
                report["without_context"] = without
                report["context_minus_none"] = context_margins(report, without)
            reports.append(report)
    if args.json:
        for report in reports:
            report.pop("rows")
            if "without_context" in report:
                report["without_context"].pop("rows")
        print(json.dumps(reports, indent=2))
    else:
        print(f"QMSum validation ({len(meetings)} meetings), whole-collection retrieval")
        for report in reports:
            print_report(report)
            if "without_context" in report:
                print_context(
                    report["format"], report["context_minus_none"], report["without_context"]
                )


if __name__ == "__main__":
    main()
