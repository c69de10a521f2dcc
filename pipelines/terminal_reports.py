"""How each command shows its run's report: JSON with `--json`, else a table or a few lines
(details of what was left out on stderr)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

from pipelines.console import print_json, print_table

if TYPE_CHECKING:
    from tasks.answers import Answer
    from tasks.batch.report import BatchReport
    from tasks.ingestion import IngestReport
    from tasks.reporting import SummarizeReport
    from tasks.settings import Settings
    from tasks.vectorstore import Hit


def print_summarize_report(report: SummarizeReport, settings: Settings, as_json: bool) -> None:
    """`gristmill summarize`: each transcript's outcome, then usage and where to see the run."""
    if as_json:
        print_json(
            {
                "transcripts": [
                    t.model_dump(include={"source", "status", "output", "error", "warnings"})
                    for t in report.transcripts
                ],
                "llm_calls": report.llm_calls,
                "usage": report.usage.model_dump(
                    include={"prompt_tokens", "completion_tokens", "cost_usd"}
                ),
                "duration_s": report.duration_s,
                "engine": report.engine,
                "model": report.model,
            }
        )
    else:
        print_summary_table(report, settings)


def print_summary_table(report: SummarizeReport, settings: Settings) -> None:
    rows = [
        (
            t.source,
            t.status,
            str(t.chunks),
            str(t.llm_calls),
            "\n".join(
                [(t.output if t.status != "failed" else t.error) or ""]
                + [f"warning: {w}" for w in t.warnings]
            ),
        )
        for t in report.transcripts
    ]
    columns = ("Transcript", "Status", "Chunks", "LLM calls", "Output / reason")
    print_table(report.headline(), columns, rows)
    usage = report.usage
    typer.echo(
        f"engine {report.engine} ({report.model}) · LLM calls {report.llm_calls} · "
        f"tokens {usage.prompt_tokens}+{usage.completion_tokens} · cost ${usage.cost_usd:.4f} · "
        f"{report.duration_s:.1f} s"
    )
    typer.echo(
        "Run history in the Prefect UI: `gristmill server`, then open http://127.0.0.1:4200/runs "
        "(this run is already in its database)"
        if not os.environ.get("PREFECT_API_URL")
        else f"Run history: {os.environ['PREFECT_API_URL'].removesuffix('/api')}/runs"
    )


def print_batch_report(report: BatchReport, as_json: bool) -> None:
    """`gristmill batch`: counts, usage and throughput, where the output and failures went."""
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        typer.echo(report.headline())
        usage = report.usage
        typer.echo(
            f"{report.engine} ({report.model}) · LLM calls {report.llm_calls} · tokens "
            f"{usage.prompt_tokens}+{usage.completion_tokens} · cost ${usage.cost_usd:.4f} · "
            f"{report.duration_s:.1f} s ({report.rows_per_s:.1f} rows/s)"
        )
        typer.echo(f"output: {report.output}")
        if report.dead_letter:
            typer.echo(f"failed rows and reasons: {report.dead_letter}")
        for line in report.quality_errors:
            typer.echo(f"data quality: {line}", err=True)


def print_ingest_report(report: IngestReport, as_json: bool) -> None:
    """`gristmill ingest`: the counts; skipped and quarantined documents on stderr."""
    from tasks.ingestion import skipped_lines

    if as_json:
        print_json(
            {
                **report.counts(),
                "duration_s": report.duration_s,
                "collection": report.collection,
                "embedding_model": report.embedding_model,
                "quarantine": [r.model_dump() for r in report.quarantine],
                "quarantine_path": report.quarantine_path,
                "skipped_documents": [s.model_dump() for s in report.skipped_documents],
            }
        )
    else:
        typer.echo(report.headline() + f" ({report.duration_s:.1f} s)")
        for line in skipped_lines(report.skipped_documents):
            typer.echo(line, err=True)
        for record in report.quarantine:
            typer.echo(f"quarantined {record.source}: {record.reason}", err=True)
        if report.quarantine_path:
            typer.echo(f"quarantine report: {report.quarantine_path}", err=True)


def print_hits(hits: list[Hit], text: str, collection: str, as_json: bool) -> None:
    """`gristmill query`: the chunks found, best first."""
    if as_json:
        from tasks.search import hit_record

        print_json([hit_record(hit) for hit in hits])
        return
    if not hits:
        typer.echo(f"no chunks in collection {collection!r} match")
        return
    rows = []
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())
        rows.append(
            (
                str(rank),
                f"{hit.score:.3f}",
                str(hit.metadata.get("source", "")),
                str(hit.metadata.get("heading", "")),
                str(hit.metadata.get("chunk_index", "")),
                snippet[:300] + ("…" if len(snippet) > 300 else ""),
            )
        )
    columns = ("#", "Score", "Source", "Heading", "Chunk", "Text")
    print_table(f"{len(hits)} chunks for {text!r}", columns, rows)


def print_answer(answer: Answer) -> None:
    """`gristmill ask`: the answer, then its numbered citations."""
    typer.echo(answer.answer)
    for c in answer.citations:
        where = f" > {c.heading}" if c.heading else ""
        typer.echo(f"[{c.number}] {c.source}{where} (chunk {c.chunk_index}, {c.score:.3f})")
