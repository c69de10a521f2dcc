"""Summary quality of the offline engine on QMSum validation, beside lead and random baselines.

Each meeting goes through the pipeline's own path: utterances -> chunk_utterances(2000, 150)
-> summarize_chunk per chunk -> combine (a non-final pass per group while plan_reduce_groups
needs more than one group at 6000 tokens) -> combine(final=True) -> final_notes (the checks
the flow applies to every engine's final notes). Two views are scored with ROUGE-1/2/L F1
(rouge-score, stemming) against the human "Summarize the whole meeting." answer: the summary
alone, and the summary plus key points as the Markdown prints them (what a reader reads).
Each view's baselines get exactly as many words as our text of that meeting: "lead" takes the
first words of the cleaned transcript, "random" takes randomly chosen cleaned turns (seeded),
kept in meeting order. Means are also given for two halves of the split (meetings sorted by
name, odd and even positions), so a choice can be checked to hold on both.

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
from tasks.summaries.final import final_notes  # noqa: E402
from tasks.summaries.reduce import plan_reduce_groups  # noqa: E402
from tasks.summaries.speakers import speakers_of  # noqa: E402
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


VIEWS = {
    "summary": "summary alone",
    "as_read": "summary + key points as read",
}


def as_read(notes: MeetingNotes) -> str:
    """What a reader of the Markdown reads first: the summary, then one line per key point."""
    return "\n".join([notes.summary, *(f"- {point}" for point in notes.key_points)])


def run(data_dir: Path, seed: int, summarizer: Summarizer | None = None) -> dict[str, Any]:
    """Score every meeting in `data_dir`; returns per-meeting rows, the means and both halves.

    Two views are scored, each beside lead and random baselines of its own length: the summary
    alone, and the summary plus key points as the Markdown prints them (after `final_notes`,
    the checks the flow applies to every engine's final notes).
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    summarizer = summarizer or ExtractiveSummarizer()
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for path in sorted(data_dir.glob("*.json")):
        utterances, reference = load_meeting(path)
        started = time.perf_counter()
        notes, chunk_count, passes = pipeline_notes(summarizer, utterances, path.stem)
        notes = final_notes(notes, speakers_of(utterances))
        seconds = time.perf_counter() - started
        turns = cleaned_turns(utterances)
        row: dict[str, Any] = {
            "meeting": path.stem,
            "meeting_words": sum(len(u.text.split()) for u in utterances),
            "summary_words": len(notes.summary.split()),
            "key_points": len(notes.key_points),
            "key_point_words": sum(len(p.split()) for p in notes.key_points),
            "reference_words": len(reference.split()),
            "chunks": chunk_count,
            "reduce_passes": passes,
            "seconds": round(seconds, 3),
        }
        for view, text in (("summary", notes.summary), ("as_read", as_read(notes))):
            words = len(text.split()) - len(notes.key_points) * (view == "as_read")
            systems = {
                "offline-extractive": text,
                "lead": lead_baseline(turns, words),
                "random": random_baseline(turns, words, rng),
            }
            row[view] = {
                system: {m: round(scorer.score(reference, t)[m].fmeasure, 4) for m in METRICS}
                for system, t in systems.items()
            }
        rows.append(row)
    halves = {"odd": rows[0::2], "even": rows[1::2]}
    return {
        "data_dir": str(data_dir),
        "meetings": len(rows),
        "engine": f"{summarizer.engine} {summarizer.model} {summarizer.version}",
        "seed": seed,
        **{view: _view_report(rows, view, seed) for view in VIEWS},
        "halves": {
            half: {view: _view_report(part, view, seed)["mean"] for view in VIEWS}
            for half, part in halves.items()
        },
        "seconds_per_meeting": {
            "mean": round(statistics.fmean(r["seconds"] for r in rows), 3),
            "max": max(r["seconds"] for r in rows),
        },
        "mean_summary_words": round(statistics.fmean(r["summary_words"] for r in rows), 1),
        "mean_key_points": round(statistics.fmean(r["key_points"] for r in rows), 1),
        "mean_key_point_words": round(statistics.fmean(r["key_point_words"] for r in rows), 1),
        "mean_reference_words": round(statistics.fmean(r["reference_words"] for r in rows), 1),
        "rows": rows,
    }


def _view_report(rows: list[dict[str, Any]], view: str, seed: int) -> dict[str, Any]:
    """Means, margins over each baseline, their intervals and wins, for one view."""
    systems_names = ["offline-extractive", "lead", "random"]
    means = {
        s: {m: round(statistics.fmean(r[view][s][m] for r in rows), 4) for m in METRICS}
        for s in systems_names
    }
    ours = "offline-extractive"
    return {
        "mean": means,
        "margin": {
            b: {m: round(means[ours][m] - means[b][m], 4) for m in METRICS}
            for b in ("lead", "random")
        },
        "margin_ci95": {
            b: {
                m: _bootstrap_ci([r[view][ours][m] - r[view][b][m] for r in rows], seed)
                for m in METRICS
            }
            for b in ("lead", "random")
        },
        "wins": {
            b: {m: sum(r[view][ours][m] > r[view][b][m] for r in rows) for m in METRICS}
            for b in ("lead", "random")
        },
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
        f"summary length: mean {report['mean_summary_words']} words; key points: mean "
        f"{report['mean_key_points']} of {report['mean_key_point_words']} words in all "
        f"(references: mean {report['mean_reference_words']})"
    )
    for view, label in VIEWS.items():
        part = report[view]
        print()
        print(f"{label} (baselines of the same length):")
        print(f"{'system':<20} {'ROUGE-1':>8} {'ROUGE-2':>8} {'ROUGE-L':>8}")
        for system, scores in part["mean"].items():
            print(f"{system:<20} " + " ".join(f"{scores[m]:>8.4f}" for m in METRICS))
        for baseline, margin in part["margin"].items():
            wins = part["wins"][baseline]
            print(
                f"{'margin vs ' + baseline:<20} "
                + " ".join(f"{margin[m]:>+8.4f}" for m in METRICS)
                + f"   (wins {'/'.join(str(wins[m]) for m in METRICS)} of {report['meetings']})"
            )
        print("95% paired-bootstrap interval of each margin:")
        for baseline, intervals in part["margin_ci95"].items():
            print(
                f"{'  vs ' + baseline:<20} "
                + "  ".join(f"{m} [{lo:+.4f}, {hi:+.4f}]" for m, (lo, hi) in intervals.items())
            )
    print()
    print("halves (meetings sorted by name; odd = 1st, 3rd, ...): ROUGE-1 ours / lead / random")
    systems = ("offline-extractive", "lead", "random")
    for half, views in report["halves"].items():
        cells = [
            f"{VIEWS[view]} " + " / ".join(f"{means[s]['rouge1']:.4f}" for s in systems)
            for view, means in views.items()
        ]
        print(f"  {half:<5} " + ";  ".join(cells))
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
