"""Setting a batch run up from its parameters: the run's settings, the job, the input, the
suites and the engine, each checked before any row is sent (a usage or configuration error).

The CLI plans first, to fail in one line before a flow run starts, and hands its engine to the
flow; a deployment run plans inside the flow from the same JSON parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tasks.batch.engines.batch_api import BatchAPIEngine
from tasks.batch.engines.chat import ChatRowEngine
from tasks.batch.engines.offline import OfflineRowEngine
from tasks.batch.engines.protocol import RowEngine
from tasks.batch.job import RecordJob, load_schema, load_template
from tasks.batch.journal import PreviousOutput
from tasks.batch.quality import load_expectation_suite
from tasks.batch.reading import RecordReader, preflight, record_format
from tasks.errors import UsageError
from tasks.settings import Settings

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

    from tasks.embeddings import Embedder

# The flow parameters that build the job (`record_job`), and those that override a setting for
# one run (`run_settings`), with that setting's name.
JOB_PARAMETERS = (
    "template",
    "task",
    "labels",
    "schema",
    "system",
    "id_column",
    "text_column",
    "max_chars",
)
SETTING_PARAMETERS = {
    "model": "llm_model",
    "temperature": "llm_temperature",
    "concurrency": "batch_concurrency",
    "rpm": "batch_rpm",
    "tpm": "batch_tpm",
}


@dataclass
class BatchPlan:
    """Everything a batch run needs, built from its parameters and checked."""

    source: Path
    output: Path
    settings: Settings
    """With the run's overrides (model, temperature, concurrency, rpm, tpm) applied."""
    job: RecordJob
    reader: RecordReader
    engine: RowEngine
    mode: str
    previous: PreviousOutput | None
    """The earlier output whose `ok` rows are kept (--retry-failed)."""
    input_suite: list[Expectation] | None
    output_suite: list[Expectation] | None


def plan_batch(
    settings: Settings, parameters: Mapping[str, Any], *, engine: RowEngine | None = None
) -> BatchPlan:
    """The run that the flow's `parameters` (the `gristmill batch` options) ask for.

    `engine`, when given, is used instead of building one from the settings (the CLI's, a
    test's); it must have been built for the same job.
    """
    run = run_settings(settings, **{p: parameters.get(p) for p in SETTING_PARAMETERS})
    job = record_job(run, **{p: parameters[p] for p in JOB_PARAMETERS if p in parameters})
    source, output = Path(parameters["input_path"]), Path(parameters["output_path"])
    if output.resolve() == source.resolve():
        raise UsageError("output_path must not be the input file")
    record_format(output)  # an output format we cannot write fails now, not after the work
    reader = preflight(source, job)
    expectations = parameters.get("expectations_path")
    output_suite = load_expectation_suite(Path(expectations)) if expectations else None
    expectations = parameters.get("input_expectations_path")
    input_suite = (
        load_expectation_suite(Path(expectations), "--input-expectations") if expectations else None
    )
    previous = PreviousOutput(output) if parameters.get("retry_failed") else None
    mode = parameters.get("mode", "online")
    if engine is None:
        engine = build_row_engine(
            run, job, mode, poll_interval_s=parameters.get("poll_interval_s", 10.0), output=output
        )
    if (parameters.get("shards") or 1) > 1 and engine.whole_job:
        raise UsageError("--shards needs --mode online: the Batch API takes a whole job at once")
    return BatchPlan(
        source=source,
        output=output,
        settings=run,
        job=job,
        reader=reader,
        engine=engine,
        mode=mode,
        previous=previous,
        input_suite=input_suite,
        output_suite=output_suite,
    )


def run_settings(settings: Settings, **parameters: Any) -> Settings:
    """`settings` with the run's overrides (model, temperature, concurrency, rpm, tpm) applied,
    checked against the settings' own bounds."""
    updated = settings.model_copy()
    for parameter, value in parameters.items():
        if value is None:
            continue
        try:
            Settings.__pydantic_validator__.validate_assignment(
                updated, SETTING_PARAMETERS[parameter], value
            )
        except ValidationError as exc:
            raise UsageError(f"{parameter}: {exc.errors()[0]['msg']}, not {value!r}") from None
    return updated


def record_job(
    settings: Settings,
    *,
    template: str | None = None,
    task: str | None = None,
    labels: list[str] | str | None = None,
    schema: str | None = None,
    system: str | None = None,
    id_column: str | None = None,
    text_column: str = "text",
    max_chars: int = 100_000,
) -> RecordJob:
    """What to do with every row, from the run's parameters (a usage error if inconsistent).

    `template` and `schema` are file paths or the text itself; `labels` a list or a
    comma-separated string; model and temperature come from `settings`.
    """
    if isinstance(labels, str):
        labels = labels.split(",")
    return RecordJob(
        template=load_template(template) if template is not None else None,
        task=task,
        system=system,
        schema=load_schema(schema),
        model=settings.llm_model,
        temperature=settings.llm_temperature,
        labels=[label.strip() for label in labels or [] if label.strip()],
        text_column=text_column,
        id_column=id_column,
        max_chars=max_chars,
    )


def build_row_engine(
    settings: Settings,
    job: RecordJob,
    mode: str = "online",
    *,
    embedder: Embedder | None = None,
    poll_interval_s: float = 10.0,
    output: Path | None = None,
) -> RowEngine:
    """The engine for a job: offline for built-in tasks, else the online or Batch API path
    (whose ledger of submitted batches belongs to the run's `output`)."""
    if mode not in ("online", "batch-api"):
        raise UsageError(f"--mode must be online or batch-api, not {mode!r}")
    if job.task is not None:
        if mode == "batch-api":
            raise UsageError("--mode batch-api applies to --template, not to built-in tasks")
        if job.task != "summarize" and embedder is None:
            from tasks.embeddings import build_embedder

            embedder = build_embedder(settings)
        return OfflineRowEngine(job, embedder)
    if mode == "batch-api":
        return BatchAPIEngine.from_settings(
            settings, job, output=output, poll_interval_s=poll_interval_s
        )
    return ChatRowEngine.from_settings(settings, job)
