"""Summary quality of the offline engine on QMSum validation, beside lead and random baselines.

Each meeting goes through the pipeline's own path: utterances -> chunk_utterances(2000, 150)
-> summarize_chunk per chunk -> combine (a non-final pass per group while plan_reduce_groups
needs more than one group at 6000 tokens) -> combine(final=True) -> `summary`. The summary is
scored with ROUGE-1/2/L F1 (rouge-score, stemming) against the human "Summarize the whole
meeting." answer. Both baselines get exactly as many words as our summary of that meeting:
"lead" takes the first words of the cleaned transcript, "random" takes randomly chosen cleaned
turns (seeded), kept in meeting order.

    python benchmarks/summary_quality.py [DATA_DIR] [--json] [--seed N]

DATA_DIR defaults to ../shared/datasets/qmsum-val next to the repository; when it is absent the
benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "qmsum-val"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tasks.chunking import chunk_utterances  # noqa: E402
from tasks.summaries import MeetingNotes, Summarizer  # noqa: E402
from tasks.summaries.engines.extractive.engine import ExtractiveSummarizer  # noqa: E402
from tasks.summaries.engines.extractive.text import clean_text, is_backchannel  # noqa: E402
from tasks.summaries.reduce import plan_reduce_groups  # noqa: E402
from tasks.transcripts import Utterance  # noqa: E402

CHUNK_TOKENS = 2000
OVERLAP_TOKENS = 150
REDUCE_BUDGET_TOKENS = 6000
METRICS = ("rouge1", "rouge2", "rougeL")


def load_meeting(path: Path) -> tuple[list[Utterance], str]:
    """The meeting's turns as utterances, and its reference whole-meeting summary."""
    data = json.loads(path.read_text(encoding="utf-8"))
    utterances = [
        Utterance(
            index=i,
            speaker=turn.get("speaker") or None,
            text=turn.get("content") or "",
            start=None,
            end=None,
        )
        for i, turn in enumerate(data["meeting_transcripts"])
    ]
    return utterances, data["general_query_list"][0]["answer"]


def pipeline_notes(
    summarizer: Summarizer, utterances: list[Utterance], title: str
) -> tuple[MeetingNotes, int, int]:
    """Map-reduce as the flow does it; returns the final notes, chunk count and reduce passes."""
    chunks = chunk_utterances(utterances, CHUNK_TOKENS, OVERLAP_TOKENS)
    parts = [
        summarizer.summarize_chunk(chunk, title=title, chunk_count=len(chunks)).notes
        for chunk in chunks
    ]
    passes = 0
    while len(groups := plan_reduce_groups(parts, REDUCE_BUDGET_TOKENS)) > 1:
        parts = [
            summarizer.combine([parts[i] for i in group], title=title, final=False).notes
            for group in groups
        ]
        passes += 1
    final = summarizer.combine(parts, title=title, final=True).notes
    return final, len(chunks), passes


def cleaned_turns(utterances: list[Utterance]) -> list[str]:
    """The transcript's turns as the engine sees them (markers, fillers, back-channel gone)."""
    turns = [clean_text(u.text) for u in utterances]
    return [t for t in turns if t and not is_backchannel(t)]


def lead_baseline(turns: list[str], words: int) -> str:
    """The first `words` words of the cleaned transcript."""
    return " ".join(" ".join(turns).split()[:words])


def random_baseline(turns: list[str], words: int, rng: random.Random) -> str:
    """Randomly chosen turns, in meeting order, cut to `words` words."""
    order = list(range(len(turns)))
    rng.shuffle(order)
    chosen: list[int] = []
    total = 0
    for i in order:
        if total >= words:
            break
        chosen.append(i)
        total += len(turns[i].split())
    text = " ".join(turns[i] for i in sorted(chosen))
    return " ".join(text.split()[:words])


def run(data_dir: Path, seed: int, summarizer: Summarizer | None = None) -> dict[str, Any]:
    """Score every meeting in `data_dir`; returns per-meeting rows and the means."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    summarizer = summarizer or ExtractiveSummarizer()
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for path in sorted(data_dir.glob("*.json")):
        utterances, reference = load_meeting(path)
        started = time.perf_counter()
        notes, chunk_count, passes = pipeline_notes(summarizer, utterances, path.stem)
        seconds = time.perf_counter() - started
        words = len(notes.summary.split())
        turns = cleaned_turns(utterances)
        systems = {
            "offline-extractive": notes.summary,
            "lead": lead_baseline(turns, words),
            "random": random_baseline(turns, words, rng),
        }
        row: dict[str, Any] = {
            "meeting": path.stem,
            "meeting_words": sum(len(u.text.split()) for u in utterances),
            "summary_words": words,
            "reference_words": len(reference.split()),
            "chunks": chunk_count,
            "reduce_passes": passes,
            "seconds": round(seconds, 3),
        }
        for system, text in systems.items():
            scores = scorer.score(reference, text)
            row[system] = {m: round(scores[m].fmeasure, 4) for m in METRICS}
        rows.append(row)
    systems_names = ["offline-extractive", "lead", "random"]
    means = {
        s: {m: round(statistics.fmean(r[s][m] for r in rows), 4) for m in METRICS}
        for s in systems_names
    }
    return {
        "data_dir": str(data_dir),
        "meetings": len(rows),
        "engine": f"{summarizer.engine} {summarizer.model} {summarizer.version}",
        "seed": seed,
        "mean": means,
        "margin": {
            baseline: {
                m: round(means["offline-extractive"][m] - means[baseline][m], 4) for m in METRICS
            }
            for baseline in ("lead", "random")
        },
        "margin_ci95": {
            baseline: {
                m: _bootstrap_ci([r["offline-extractive"][m] - r[baseline][m] for r in rows], seed)
                for m in METRICS
            }
            for baseline in ("lead", "random")
        },
        "wins": {
            baseline: {
                m: sum(r["offline-extractive"][m] > r[baseline][m] for r in rows) for m in METRICS
            }
            for baseline in ("lead", "random")
        },
        "seconds_per_meeting": {
            "mean": round(statistics.fmean(r["seconds"] for r in rows), 3),
            "max": max(r["seconds"] for r in rows),
        },
        "mean_summary_words": round(statistics.fmean(r["summary_words"] for r in rows), 1),
        "mean_reference_words": round(statistics.fmean(r["reference_words"] for r in rows), 1),
        "rows": rows,
    }


def _bootstrap_ci(diffs: list[float], seed: int, resamples: int = 2000) -> list[float]:
    """95% paired-bootstrap interval of the mean per-meeting difference."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return [round(means[int(0.025 * resamples)], 4), round(means[int(0.975 * resamples) - 1], 4)]


def print_table(report: dict[str, Any]) -> None:
    """A plain-text report for people."""
    print(f"QMSum validation: {report['meetings']} meetings from {report['data_dir']}")
    print(f"engine: {report['engine']}; random baseline seed {report['seed']}")
    print(
        f"summary length: mean {report['mean_summary_words']} words "
        f"(references: mean {report['mean_reference_words']})"
    )
    print()
    print(f"{'system':<20} {'ROUGE-1':>8} {'ROUGE-2':>8} {'ROUGE-L':>8}")
    for system, scores in report["mean"].items():
        print(f"{system:<20} " + " ".join(f"{scores[m]:>8.4f}" for m in METRICS))
    for baseline, margin in report["margin"].items():
        wins = report["wins"][baseline]
        print(
            f"{'margin vs ' + baseline:<20} "
            + " ".join(f"{margin[m]:>+8.4f}" for m in METRICS)
            + f"   (wins {'/'.join(str(wins[m]) for m in METRICS)} of {report['meetings']})"
        )
    print()
    print("95% paired-bootstrap interval of each margin:")
    for baseline, intervals in report["margin_ci95"].items():
        print(
            f"{'  vs ' + baseline:<20} "
            + "  ".join(f"{m} [{lo:+.4f}, {hi:+.4f}]" for m, (lo, hi) in intervals.items())
        )
    timing = report["seconds_per_meeting"]
    print()
    print(
        f"time per meeting (chunk + map + reduce): mean {timing['mean']:.3f}s, "
        f"max {timing['max']:.3f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir() or not any(args.data_dir.glob("*.json")):
        print(f"skipped: no QMSum meetings at {args.data_dir}")
        return 0
    report = run(args.data_dir, args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
