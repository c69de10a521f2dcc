"""Retrieval quality on QMSum validation: recall@5 and recall@10 of the ingested chunks.

    python benchmarks/retrieval_quality.py [DATA_DIR] [--json]

Each meeting's `meeting_transcripts` (a JSON list of speaker/content turns) is written to a temp
`<meeting>.json`, never into the project, and ingested by the flow's own body (`ingest_files`
with the plain steps: no Prefect server) into a fresh on-disk Chroma with the local embedder
(int8 all-MiniLM-L6-v2). The loader reads such a file as a transcript, one paragraph per
utterance; chunks are cut on utterance boundaries at the embedder's budget (254 word pieces,
40 tokens of overlap, the default settings) and record `first_utterance`..`last_utterance`.

For each specific query, the top-k chunks among that meeting's own chunks (Chroma `where` on
`source`) are retrieved the way `gristmill query` does (`query_chunks`: nearest chunks re-ranked
with BM25, tasks/hybrid.py), and also by the embedder alone (the k nearest); the query counts
as a hit at k when any of them overlaps one of its relevant spans (inclusive turn indices,
mapped to utterance indices the way the loader numbers them: empty turns are dropped).
recall@k is the share of queries hit. Baselines on the same chunks, in the same run:
- `lexical`: chunks ranked by how many distinct query words they contain (lower case, ASR
  markers such as `{vocalsound}` and a short stop-word list removed; ties by chunk order);
- `random`: k chunks drawn at random, scored exactly by its expectation per query,
  1 - C(n - r, k) / C(n, k) for n chunks of which r overlap a relevant span.

DATA_DIR defaults to ../shared/datasets/qmsum-val next to the repository; when it is absent the
benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "qmsum-val"
MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KS = (5, 10)
DOMAINS = {"ES": "AMI", "IS": "AMI", "TS": "AMI", "Be": "ICSI", "Bm": "ICSI", "Br": "ICSI"}
_MARKER = re.compile(r"\{\w+\}")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = """
    a about above after again all also am an and any are as at be been before being below
    between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just me
    more most my no nor not now of off on once only or other our ours out over own same she
    should so some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your yours discuss discussed discussion summarize summarise meeting
    think thought said say talk talked well yeah okay ok um uh mm hmm gonna like
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def domain(meeting: str) -> str:
    return DOMAINS.get(meeting[:2], "parliament")


def words(text: str) -> set[str]:
    """Distinct content words, for the lexical baseline."""
    return {w for w in _WORD.findall(_MARKER.sub(" ", text.lower())) if w not in STOPWORDS}


def turn_utterances(turns: list[dict[str, Any]]) -> list[range]:
    """For each turn, the utterance indices the loader gives it (none for an empty turn).

    Each turn goes through the same parser, alone, so the rule is the loader's own (empty
    turns dropped, over-long ones split into sentence groups)."""
    from tasks.errors import InputError
    from tasks.transcripts import parse_transcript_text

    spans: list[range] = []
    start = 0
    for turn in turns:
        try:
            count = len(parse_transcript_text(json.dumps([turn]), "json"))
        except InputError:  # no utterance in this turn
            count = 0
        spans.append(range(start, start + count))
        start += count
    return spans


def relevant_utterances(query: dict[str, Any], turns: list[range]) -> list[tuple[int, int]]:
    """The query's relevant turn spans as inclusive utterance spans (empty ones left out)."""
    spans = []
    for first, last in query["relevant_text_span"]:
        covered = [
            u for t in range(int(first), min(int(last), len(turns) - 1) + 1) for u in turns[t]
        ]
        if covered:
            spans.append((min(covered), max(covered)))
    return spans


def overlaps(chunk: dict[str, Any], spans: list[tuple[int, int]]) -> bool:
    first, last = int(chunk["first_utterance"]), int(chunk["last_utterance"])
    return any(first <= end and start <= last for start, end in spans)


def stored_chunks(store: Any, source: str) -> list[dict[str, Any]]:
    """The chunks of `source` in chunk order: their metadata plus `text`."""
    page = store.collection.get(where={"source": source}, include=["metadatas", "documents"])
    chunks: list[dict[str, Any]] = [
        {**(metadata or {}), "text": text or ""}
        for metadata, text in zip(page["metadatas"] or [], page["documents"] or [], strict=True)
    ]
    return sorted(chunks, key=lambda chunk: int(chunk["chunk_index"]))


def random_hit(n: int, relevant: int, k: int) -> float:
    """Chance that k chunks drawn at random from n include one of `relevant`."""
    if relevant == 0:
        return 0.0
    if n - relevant < k:
        return 1.0
    return 1.0 - math.comb(n - relevant, k) / math.comb(n, k)


def run(data_dir: Path) -> dict[str, Any]:
    from tasks.chroma_client import open_chroma
    from tasks.documents import discover_documents
    from tasks.embeddings import LocalOnnxEmbedder
    from tasks.ingestion import ingest_files
    from tasks.model_files import missing_files, provision_embedding_model
    from tasks.retrieval import query_chunks
    from tasks.settings import Settings
    from tasks.vectorstore import ChunkStore

    if missing_files(MODEL_DIR):
        provision_embedding_model(MODEL_DIR)
    meetings = {
        path.stem: json.loads(path.read_text("utf-8")) for path in sorted(data_dir.glob("*.json"))
    }
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as name:
        tmp = Path(name)
        folder = tmp / "meetings"
        folder.mkdir()
        for stem, meeting in meetings.items():
            (folder / f"{stem}.json").write_text(
                json.dumps(meeting["meeting_transcripts"], ensure_ascii=False), "utf-8"
            )
        settings = Settings(_env_file=None, data_dir=tmp / "data", model_dir=MODEL_DIR)
        embedder = LocalOnnxEmbedder(MODEL_DIR)
        store = ChunkStore(open_chroma(settings), "qmsum-val", embedder.name, embedder.dimension)
        started = time.perf_counter()
        report = ingest_files(discover_documents([folder]), store, embedder, settings)
        ingest_s = time.perf_counter() - started
        if report.quarantined:
            raise SystemExit(f"quarantined: {report.quarantine}")

        rows: list[dict[str, Any]] = []
        skipped = 0
        started = time.perf_counter()
        for stem, meeting in meetings.items():
            source = f"{stem}.json"
            chunks = stored_chunks(store, source)
            if not chunks or chunks[0].get("format") != "json-transcript":
                raise SystemExit(f"{source} was not loaded as a transcript")
            turns = turn_utterances(meeting["meeting_transcripts"])
            loaded = int(chunks[0]["utterances"])
            assert loaded == turns[-1].stop, f"{source}: {loaded} utterances vs {turns[-1].stop}"
            chunk_words = [words(c["text"]) for c in chunks]
            for query in meeting["specific_query_list"]:
                spans = relevant_utterances(query, turns)
                if not spans:
                    skipped += 1
                    continue
                relevant = sum(overlaps(c, spans) for c in chunks)
                vector = embedder.embed([query["query"]])[0]
                hits = store.query(vector, k=max(KS), where={"source": source})
                dense = [overlaps(hit.metadata, spans) for hit in hits]
                hits = query_chunks(query["query"], store, embedder, max(KS), {"source": source})
                hybrid = [overlaps(hit.metadata, spans) for hit in hits]
                query_words = words(query["query"])
                order = sorted(
                    range(len(chunks)), key=lambda i: (-len(query_words & chunk_words[i]), i)
                )
                lexical = [overlaps(chunks[i], spans) for i in order[: max(KS)]]
                row: dict[str, Any] = {
                    "meeting": stem,
                    "domain": domain(stem),
                    "chunks": len(chunks),
                    "relevant_chunks": relevant,
                }
                for k in KS:
                    row[f"hybrid@{k}"] = float(any(hybrid[:k]))
                    row[f"dense@{k}"] = float(any(dense[:k]))
                    row[f"lexical@{k}"] = float(any(lexical[:k]))
                    row[f"random@{k}"] = random_hit(len(chunks), relevant, k)
                rows.append(row)
        query_s = time.perf_counter() - started

    systems = ("hybrid", "dense", "lexical", "random")

    def mean(selected: list[dict[str, Any]]) -> dict[str, float]:
        return {
            f"{s}@{k}": round(statistics.fmean(r[f"{s}@{k}"] for r in selected), 4)
            for s in systems
            for k in KS
        }

    by_domain = {
        name: {"queries": len(group), **mean(group)}
        for name in sorted({r["domain"] for r in rows})
        if (group := [r for r in rows if r["domain"] == name])
    }
    return {
        "data_dir": str(data_dir),
        "meetings": len(meetings),
        "queries": len(rows),
        "queries_without_span": skipped,
        "chunks": report.chunks_written,
        "chunks_per_meeting": round(report.chunks_written / max(len(meetings), 1), 1),
        "relevant_share": round(
            statistics.fmean(r["relevant_chunks"] / r["chunks"] for r in rows), 3
        ),
        "ingest_s": round(ingest_s, 1),
        "query_s": round(query_s, 1),
        "embedder": embedder.name,
        "chunk_tokens": min(settings.doc_chunk_tokens, embedder.max_text_tokens),
        "overlap_tokens": settings.doc_chunk_overlap_tokens,
        "recall": mean(rows),
        "margin_ci95": {
            f"hybrid-{base}@{k}": bootstrap_ci([r[f"hybrid@{k}"] - r[f"{base}@{k}"] for r in rows])
            for base in ("dense", "lexical", "random")
            for k in KS
        },
        "by_domain": by_domain,
    }


def bootstrap_ci(diffs: list[float], seed: int = 0, resamples: int = 2000) -> list[float]:
    """95% paired-bootstrap interval of the mean per-query difference."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return [round(means[int(0.025 * resamples)], 3), round(means[int(0.975 * resamples) - 1], 3)]


def print_recall_table(
    report: dict[str, Any], labels: dict[str, str], bases: tuple[str, ...], margin: str
) -> None:
    """Recall@5 and @10 of each retriever in `labels` (the first is the one under test), then
    its margin over each of `bases` with the 95 % paired-bootstrap interval (`margin` names the
    row, `{base}` in it the base)."""
    recall, tested = report["recall"], next(iter(labels))
    print("| retriever | recall@5 | recall@10 |")
    print("| --- | --- | --- |")
    for system, label in labels.items():
        print(f"| {label} | {recall[f'{system}@5']:.3f} | {recall[f'{system}@10']:.3f} |")
    for base in bases:
        cells = []
        for k in KS:
            difference = recall[f"{tested}@{k}"] - recall[f"{base}@{k}"]
            low, high = report["margin_ci95"][f"{tested}-{base}@{k}"]
            cells.append(f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]")
        row = margin.format(base=base)
        print(f"| {row} (95 % paired bootstrap) | {cells[0]} | {cells[1]} |")


def print_table(report: dict[str, Any]) -> None:
    print(
        f"QMSum validation: {report['meetings']} meetings, {report['queries']} specific queries "
        f"({report['queries_without_span']} without a usable span left out), "
        f"{report['chunks']} chunks ({report['chunks_per_meeting']} per meeting; "
        f"{report['chunk_tokens']} tokens, overlap {report['overlap_tokens']}), "
        f"{report['embedder']}"
    )
    print(
        f"a query's relevant spans overlap {report['relevant_share']:.1%} of its meeting's "
        f"chunks on average; ingest {report['ingest_s']} s, queries {report['query_s']} s\n"
    )
    names = {"hybrid": "gristmill (`query_chunks`: MiniLM candidates + BM25, fused)",
             "dense": "MiniLM alone (top-k nearest)", "lexical": "lexical overlap",
             "random": "random chunks (expected)"}  # fmt: skip
    print_recall_table(report, names, ("dense", "lexical", "random"), "margin vs {base}")
    print(
        "\n| domain | queries | gristmill @5 / @10 | MiniLM alone @5 / @10 | lexical @5 / @10 "
        "| random @5 / @10 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in report["by_domain"].items():
        cells = [f"{row[f'{s}@5']:.3f} / {row[f'{s}@10']:.3f}" for s in names]
        print(f"| {name} | {row['queries']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if not args.data_dir.is_dir() or not any(args.data_dir.glob("*.json")):
        print(f"QMSum data not found at {args.data_dir}: skipping (nothing measured)")
        return
    report = run(args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
