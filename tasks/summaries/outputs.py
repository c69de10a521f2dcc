"""Where summaries go: unique output names, the done-already check, Markdown, atomic writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.quality import QualityReport, summary_expectations, validate_table
from tasks.reporting import write_atomically
from tasks.summaries.cache import hash_text
from tasks.summaries.models import Summarizer, TranscriptSummary
from tasks.transcripts.model import FoundTranscript

if TYPE_CHECKING:
    import pandas as pd


def output_names(found: list[FoundTranscript]) -> list[str]:
    """A unique output name (no extension) for each transcript, the same on every run.

    The path under its input without the extension (`sub/notes` for `<input>/sub/notes.txt`),
    so folders are mirrored under the output folder. Inputs that would share a name (`notes.txt`
    and `notes.md`; names differing only in case count as one, as on case-insensitive disks)
    keep their extension instead (`notes_txt`); any still shared (one file name under two inputs)
    add a short hash of the file's absolute path. Argument order never changes a name.
    """
    names = [(f.relative.parent / f.relative.stem).as_posix() for f in found]
    names = _unshare(
        names, [(f.relative.parent / f.relative.name.replace(".", "_")).as_posix() for f in found]
    )
    hashed = [
        f"{name}-{hash_text(str(f.path.resolve()))[:8]}"
        for name, f in zip(names, found, strict=True)
    ]
    return _unshare(names, hashed)


def _unshare(names: list[str], alternatives: list[str]) -> list[str]:
    """`names`, with the alternative taken wherever a name is not unique (ignoring case)."""
    counts = Counter(name.casefold() for name in names)
    return [
        alternative if counts[name.casefold()] > 1 else name
        for name, alternative in zip(names, alternatives, strict=True)
    ]


def existing_summary(
    out_dir: Path, stem: str, content_hash: str, summarizer: Summarizer
) -> Path | None:
    """The output already written for this exact content, engine, model and prompt, if any."""
    path = out_dir / f"{stem}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (
        data.get("content_hash") == content_hash
        and data.get("engine") == summarizer.engine
        and data.get("model") == summarizer.model
        and data.get("prompt_version") == summarizer.version
    )
    return path if same and (out_dir / f"{stem}.md").exists() else None


def summaries_frame(summary: TranscriptSummary) -> pd.DataFrame:
    """The one-row table the summaries suite checks before writing."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "source": summary.source,
                "summary": summary.summary,
                "chunk_count": summary.chunk_count,
                "key_point_count": len(summary.key_points),
                "participant_count": len(summary.participants),
                "action_items_without_description": sum(
                    not a.description.strip() for a in summary.action_items
                ),
            }
        ]
    )


def render_markdown(summary: TranscriptSummary) -> str:
    """The summary as a Markdown document for people."""
    lines = [f"# {summary.source}", ""]
    lines.append(
        f"_engine: {summary.engine} · model: {summary.model} · chunks: {summary.chunk_count}"
        f" · generated: {summary.generated_at:%Y-%m-%d %H:%M UTC}_"
    )
    lines += ["", "## Summary", "", summary.summary, ""]
    if summary.participants:
        lines += ["## Participants", "", ", ".join(summary.participants), ""]
    if summary.key_points:
        lines += ["## Key points", "", *[f"- {p}" for p in summary.key_points], ""]
    lines += ["## Decisions", ""]
    lines += [f"- {d}" for d in summary.decisions] or ["_none recorded_"]
    lines += ["", "## Action items", ""]
    if summary.action_items:
        lines += ["| Action | Owner | Due |", "| --- | --- | --- |"]
        for item in summary.action_items:
            cells = [item.description, item.owner or "", item.due or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    else:
        lines.append("_none recorded_")
    return "\n".join(lines) + "\n"


@task(task_run_name="write {stem}", cache_policy=NO_CACHE)
def write_summary(
    summary: TranscriptSummary, out_dir: Path, stem: str
) -> tuple[Path, QualityReport]:
    """Gate the summary on quality, then write `<stem>.json` and `<stem>.md` atomically."""
    report = validate_table(summaries_frame(summary), "summaries", summary_expectations())
    report.raise_for_errors()
    json_path = out_dir / f"{stem}.json"
    write_atomically(out_dir / f"{stem}.md", render_markdown(summary))
    # JSON last: its presence (with a matching hash) marks the transcript as done
    write_atomically(json_path, summary.model_dump_json(indent=2) + "\n")
    return json_path, report
