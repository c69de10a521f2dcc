"""The `gristmill` command line: one command per job, one line and an exit code on errors.

Exit codes: 0 all done; 1 the run finished but some items failed (reported, the rest
written); 2 bad usage or configuration. Heavy libraries (prefect, pandas, chromadb, GX) are
imported inside the commands, so `gristmill --help` stays fast. What the commands share lives
beside it: `console` (errors, exit codes, tables, progress), `environment` (settings, Prefect's
server) and `terminal_reports` (each command's report on the terminal).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.console import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Collection,
    ProgressBar,
    ReportJson,
    Shards,
    Verbose,
    error_exit_code,
    fail,
    fail_on_server_trouble,
    print_json,
)
from pipelines.environment import check_port, load_settings, prepare_prefect
from pipelines.serving_commands import serve, server_app
from pipelines.terminal_reports import (
    print_answer,
    print_batch_report,
    print_ingest_report,
    print_summarize_report,
)

if TYPE_CHECKING:
    from prefect.states import State

app = typer.Typer(
    name="gristmill",
    help="Prefect pipelines that grind raw text into useful products.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"gristmill {version('gristmill')}")
        except PackageNotFoundError:
            typer.echo("gristmill (not installed: run `make setup`)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Prefect pipelines that grind raw text into useful products."""


@app.command()
def summarize(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Transcript files or folders.", show_default="<data_dir>/transcripts"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder.", show_default="<data_dir>/summaries"),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="offline or openai.", show_default="from settings"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute, ignoring caches.")] = False,
    shards: Shards = 1,
    as_json: ReportJson = False,
    verbose: Verbose = False,
) -> None:
    """Summarise meeting transcripts into JSON and Markdown."""
    if engine not in (None, "offline", "openai"):
        fail(f"--engine must be offline or openai, not {engine!r}")
    settings = load_settings(engine=engine)
    prepare_prefect(settings, verbose=verbose, checks=True)  # before anything imports prefect
    from tasks.errors import GristmillError
    from tasks.transcripts import check_output_folder

    try:
        check_output_folder(paths or [settings.transcripts_dir], out or settings.summaries_dir)
    except GristmillError as exc:
        fail(str(exc))
    from pipelines.runners import check_task_runner
    from tasks.summaries import build_summarizer

    try:
        summarizer = build_summarizer(settings)
        check_task_runner(settings)
    except GristmillError as exc:
        fail(str(exc))
    from pipelines.run_context import heartbeats, run_context
    from pipelines.summarize import needs_checks, summarize_flow_for
    from tasks.quality import preload

    work_to_do = needs_checks(paths, out, settings, summarizer, force)
    if work_to_do:
        preload()  # GX's import overlaps the flow run's set-up; a cached re-run never pays it
    progress = ProgressBar(enabled=not as_json)
    typer.echo(f"Summarising with {summarizer.engine} ({summarizer.model}) ...", err=True)
    try:
        progress.start("transcripts", parts=("chunk", "chunks"))
        with (
            run_context(settings=settings, summarizer=summarizer, on_progress=progress.update),
            heartbeats(work_to_do),
        ):
            state = summarize_flow_for(settings)(
                paths=[str(p) for p in paths] if paths else None,
                out_dir=str(out) if out else None,
                force=force,
                shards=shards,
                return_state=True,
            )
    finally:
        progress.stop()
    from tasks.reporting import SummarizeReport, state_report

    report = state_report(state)
    if isinstance(report, GristmillError):
        fail(str(report), report.exit_code)
    if not isinstance(report, SummarizeReport):
        fail(f"the run did not finish: {state.message or report}", EXIT_ITEMS_FAILED)  # type: ignore[union-attr]
    print_summarize_report(report, settings, as_json)
    raise typer.Exit(EXIT_ITEMS_FAILED if report.failed else EXIT_OK)


@app.command()
def doctor() -> None:
    """Check settings, engines, the Prefect API and model files; say what to fix."""
    from pipelines.doctor import run_checks

    settings = load_settings()
    problems = run_checks(settings, echo=typer.echo)
    raise typer.Exit(EXIT_USAGE if problems else EXIT_OK)


@app.command()
def batch(
    input_path: Annotated[Path, typer.Argument(help="Input table: .csv, .jsonl or .parquet.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output table (.csv, .jsonl or .parquet).")
    ],
    template: Annotated[
        str | None,
        typer.Option("--template", help="Jinja2 prompt template: a file or the text itself."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Built-in offline task: summarize, classify or embed."),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="JSON Schema file, or fields: 'category,priority:int'."),
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="Column with row ids.", show_default="hash")
    ] = None,
    text_column: Annotated[
        str, typer.Option("--text-column", help="Text column for --task.")
    ] = "text",
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Requests in flight.")
    ] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="online or batch-api.")] = "online",
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated labels for classify.")
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Re-process only rows of OUTPUT that are not ok."),
    ] = False,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Chat model.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0, max=2, help="Sampling temperature.")
    ] = None,
    expectations: Annotated[
        Path | None,
        typer.Option("--expectations", help="GX expectation suite JSON, checked on the output."),
    ] = None,
    input_expectations: Annotated[
        Path | None,
        typer.Option(
            "--input-expectations",
            help="GX expectation suite JSON, checked on the input before any LLM call: "
            "the rows it fails end invalid_input.",
        ),
    ] = None,
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=1, help="Longest row text accepted.")
    ] = 100_000,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between Batch API polls.")
    ] = 10.0,
    shards: Shards = 1,
    as_json: ReportJson = False,
    verbose: Verbose = False,
) -> None:
    """Run every row of a table through a prompt template (or a built-in offline task)."""
    settings = load_settings()
    prepare_prefect(settings, verbose=verbose, checks=True)
    from pipelines.batch import batch_records_for
    from pipelines.run_context import run_context
    from pipelines.runners import check_task_runner
    from tasks.batch.plan import plan_batch
    from tasks.batch.report import BatchReport
    from tasks.errors import GristmillError
    from tasks.reporting import state_report

    # The flow's parameters, as a deployment run would pass them.
    parameters: dict[str, Any] = {
        "input_path": str(input_path),
        "output_path": str(output),
        "template": template,
        "task": task,
        "labels": labels.split(",") if labels is not None else None,
        "schema": schema,
        "id_column": id_column,
        "text_column": text_column,
        "system": system,
        "model": model,
        "temperature": temperature,
        "concurrency": concurrency,
        "rpm": rpm,
        "tpm": tpm,
        "mode": mode,
        "retry_failed": retry_failed,
        "expectations_path": str(expectations) if expectations else None,
        "input_expectations_path": str(input_expectations) if input_expectations else None,
        "max_chars": max_chars,
        "poll_interval_s": poll_interval,
        "shards": shards,
    }
    if output.resolve() == input_path.resolve():
        fail("--output must not be the input file")
    try:
        # What the flow plans from the same parameters, planned first here so that a usage or
        # configuration error is one line and exit code 2, before any flow run starts.
        engine = plan_batch(settings, parameters).engine
        check_task_runner(settings)
    except GristmillError as exc:
        fail(str(exc))
    from tasks.quality import preload

    preload()  # every batch checks its rows: import GX while the flow run is being set up

    progress = ProgressBar(enabled=not as_json)
    typer.echo(f"Processing {input_path} with {engine.name} ({engine.model}) ...", err=True)
    try:
        progress.start("rows")
        with run_context(settings=settings, engine=engine, on_progress=progress.update):
            state = batch_records_for(settings)(**parameters, return_state=True)
    finally:
        progress.stop()
        engine.close()
    report = state_report(state)
    if isinstance(report, GristmillError):
        fail(str(report), report.exit_code)
    if not isinstance(report, BatchReport):
        fail(f"the run did not finish: {state.message or report}", EXIT_ITEMS_FAILED)
    print_batch_report(report, as_json)
    raise typer.Exit(EXIT_OK if report.success else EXIT_ITEMS_FAILED)


app.command()(serve)  # the long-running commands live in pipelines/serving_commands.py
app.add_typer(server_app, name="server")


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Document files or folders.", show_default="<data_dir>/documents"),
    ] = None,
    collection: Collection = None,
    cleanup: Annotated[
        str,
        typer.Option(
            "--cleanup",
            help="none: never delete; incremental: replace changed documents; full: also "
            "delete documents that are gone.",
        ),
    ] = "incremental",
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Glob of files to take (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Glob of files to skip (repeatable).")
    ] = None,
    shards: Shards = 1,
    as_json: ReportJson = False,
    verbose: Verbose = False,
) -> None:
    """Ingest documents into the vector store, incrementally."""
    if cleanup not in ("none", "incremental", "full"):
        fail(f"--cleanup must be none, incremental or full, not {cleanup!r}")
    settings = load_settings(collection=collection)
    from pipelines.runners import check_cluster_store, check_task_runner
    from tasks.documents import discover_documents
    from tasks.embeddings import build_embedder, chars_per_second, load_in_background
    from tasks.errors import GristmillError
    from tasks.quality import preload
    from tasks.reporting import Progress

    try:
        embedder = build_embedder(settings)
        check_cluster_store(settings)
        # Counted before the Prefect server starts (~20 s on a new data dir), so the bar shows
        # them at once; the flow finds the same files.
        found = discover_documents(paths or [settings.documents_dir], include, exclude)
    except GristmillError as exc:
        fail(str(exc))
    progress = ProgressBar(enabled=not as_json)

    def estimate() -> None:
        """The work's time from the documents' size and this machine's embedding speed, on
        the bar while Prefect starts (embedding is ~90 % of a first ingest)."""
        size = sum(document.path.stat().st_size for document in found)
        progress.estimate(1.1 * size / chars_per_second(embedder))

    # The first batch needs the model and great-expectations: both load while Prefect starts,
    # unless the collection already answers for every file (an unchanged re-run uses neither).
    from tasks.ingestion.batch import needs_work

    work_to_do = shards > 1 or needs_work(found, settings, embedder, settings.collection)
    loading = None
    if work_to_do:
        loading = load_in_background(embedder, then=estimate if found else None)
        preload()
    typer.echo(f"Ingesting into {settings.collection!r} with {embedder.name} ...", err=True)
    try:
        progress.start("documents", parts=("chunk embedded", "chunks embedded"))
        progress.update(Progress(0, len(found)))
        prepare_prefect(settings, verbose=verbose)
        try:
            check_task_runner(settings)  # after prepare_prefect: the Dask workers need its server
        except GristmillError as exc:
            progress.stop()
            fail(str(exc))
        from pipelines.ingest import ingest_flow_for
        from pipelines.run_context import heartbeats, run_context

        with (
            run_context(settings=settings, embedder=embedder, on_progress=progress.update),
            heartbeats(work_to_do),
        ):
            state: State[Any] = ingest_flow_for(settings)(  # type: ignore[assignment]
                paths=[str(p) for p in paths] if paths else None,
                collection=settings.collection,
                cleanup=cleanup,
                include=include,
                exclude=exclude,
                shards=shards,
                return_state=True,
            )
    finally:
        progress.stop()
        if loading is not None:  # no exit while onnxruntime is half loaded
            loading.join(timeout=120)
    from tasks.ingestion import IngestReport
    from tasks.reporting import state_report

    report = state_report(state)
    if isinstance(report, Exception):
        fail(str(report), error_exit_code(report))
    if not isinstance(report, IngestReport):
        fail(f"the run did not finish: {state.message or report}", EXIT_ITEMS_FAILED)
    print_ingest_report(report, as_json)
    raise typer.Exit(EXIT_ITEMS_FAILED if report.quarantine else EXIT_OK)


@app.command()
def query(
    text: Annotated[str | None, typer.Argument(help="What to search for.")] = None,
    collection: Collection = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Chunks to return.")] = 5,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="Metadata filter KEY=VALUE (repeatable, all must match)."),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            help='JSON lines {"id", "text", "k"?, "where"?} (- for stdin): one JSON line of hits '
            "out per query, model and store loaded once.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """Show the chunks that best match TEXT, best first (nearest by embedding, re-ranked with
    BM25; the score shown is the cosine similarity)."""
    from pipelines.query import query_command

    query_command(load_settings(collection=collection), text, queries, k, where or [], as_json)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the documents.")],
    collection: Collection = None,
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="Chunks to answer from.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Answer a question from the ingested documents, with numbered citations."""
    settings = load_settings(collection=collection)
    prepare_prefect(settings, verbose=verbose)
    from tasks.embeddings import build_embedder
    from tasks.errors import GristmillError

    try:
        embedder = build_embedder(settings)
    except GristmillError as exc:
        fail(str(exc))
    from pipelines.ask import Answer, answer_question
    from pipelines.run_context import run_context
    from tasks.reporting import state_report

    with run_context(settings=settings, embedder=embedder):
        state = answer_question(question, collection=settings.collection, k=k, return_state=True)
    answer = state_report(state)
    if isinstance(answer, Exception):
        fail(str(answer), error_exit_code(answer))
    if not isinstance(answer, Answer):
        fail(f"the run did not finish: {state.message or answer}", EXIT_ITEMS_FAILED)
    if as_json:
        print_json(answer.model_dump(mode="json"))
    if answer.refused:
        fail(f"refused: {answer.reason}")
    if not as_json:
        print_answer(answer)


@app.command()
def api(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
) -> None:
    """Serve search and ask over HTTP: POST /query, POST /ask, GET /collections, GET /health."""
    settings = load_settings()
    check_port(host, port)
    from pipelines.service import serve_api

    serve_api(settings, host, port, echo=lambda line: typer.echo(line, err=True))


@app.command()
def mcp(
    transport: Annotated[
        str, typer.Option("--transport", help="stdio (started by the client) or http.")
    ] = "stdio",
    host: Annotated[str, typer.Option("--host", help="Address for http.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port for http.")] = 8001,
) -> None:
    """Serve search, ask and list_collections as Model Context Protocol tools."""
    if transport not in ("stdio", "http"):
        fail(f"--transport must be stdio or http, not {transport!r}")
    settings = load_settings()
    if transport == "http":
        check_port(host, port)
    from pipelines.mcp_server import serve_mcp

    serve_mcp(settings, transport, host, port, echo=lambda line: typer.echo(line, err=True))


def main() -> None:
    """Console-script entry point: errors become one line and an exit code."""
    from tasks.errors import GristmillError

    try:
        app()
    except GristmillError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:
        fail_on_server_trouble(exc)  # the Prefect server failing is one line, not a traceback
        raise


if __name__ == "__main__":
    main()
