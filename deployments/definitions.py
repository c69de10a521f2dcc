"""gristmill's deployments as code: what runs when, with which parameters.

One function per pipeline builds its `RunnerDeployment`; `build_deployments` returns the ones
listed in `DEPLOYMENT_BUILDERS`. `gristmill serve` serves them from one process; `prefect.yaml`
at the repo root describes the same deployments for a `gristmill` process work pool.

Flow modules are imported inside the builders, so importing this module stays cheap and a
pipeline that is not written yet breaks only its own builder. Summaries and batches run their
tasks where GRISTMILL_TASK_RUNNER says when served (`pipelines/runners.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

PROJECT_TAG = "gristmill"
DEFAULT_SUMMARIZE_SCHEDULE = "0 2 * * *"
DEFAULT_INGEST_SCHEDULE = "every 1h"
DEFAULT_TIMEZONE = "UTC"
# The batch deployment's defaults: the sample tickets, classified offline by their subject (the
# body of one sample ticket is empty on purpose, which would end that row invalid_input).
BATCH_PARAMETERS: dict[str, object] = {
    "input_path": "data/records/support-tickets.csv",
    "output_path": "data/batch/support-tickets.classified.csv",
    "task": "classify",
    "labels": ["billing", "bug", "feature request", "account access", "robot hardware"],
    "id_column": "ticket_id",
    "text_column": "subject",
    "mode": "online",
    "retry_failed": False,
}

DeploymentBuilder = Callable[[str, str], "RunnerDeployment"]


def parse_schedule(text: str, timezone: str = DEFAULT_TIMEZONE) -> list[Schedule]:
    """A schedule in words (`0 2 * * *`, `every 15m`, `none`; see `schedule_spec`) as Prefect
    schedules. Raises ValueError with a message naming what is wrong."""
    from prefect.schedules import Cron, Interval

    from tasks.settings import schedule_spec

    kind, value = schedule_spec(text)
    if kind == "interval":
        return [Interval(timedelta(seconds=int(value)), timezone=timezone)]
    if kind == "cron":
        try:
            return [Cron(str(value), timezone=timezone)]
        except ValueError:
            raise ValueError(f"schedule {text!r} is not a valid cron line") from None
    return []


def summarize_deployment(
    timezone: str = DEFAULT_TIMEZONE, schedule: str = DEFAULT_SUMMARIZE_SCHEDULE
) -> RunnerDeployment:
    """`summarize-transcripts/nightly`: summarise new or changed transcripts (02:00 unless
    GRISTMILL_SUMMARIZE_SCHEDULE says otherwise)."""
    from pipelines.summarize import summarize_flow_for
    from tasks.settings import Settings

    return _runner_deployment(
        summarize_flow_for(Settings()).to_deployment(
            name="nightly",
            description=(
                "Every night at 02:00: summarise the transcripts under <data_dir>/transcripts into "
                "<data_dir>/summaries. Unchanged transcripts are skipped (their summaries are "
                "cached), so a re-run costs nothing. Run it now with other paths by overriding "
                "`paths` and `out_dir`."
            ),
            schedules=parse_schedule(schedule, timezone),
            parameters={"paths": None, "out_dir": None, "force": False},
            tags=[PROJECT_TAG, "pipeline:summarize"],
        )
    )


def ingest_deployment(
    timezone: str = DEFAULT_TIMEZONE, schedule: str = DEFAULT_INGEST_SCHEDULE
) -> RunnerDeployment:
    """`ingest-documents/hourly`: keep the Chroma collection in step with the documents (every
    hour unless GRISTMILL_INGEST_SCHEDULE says otherwise)."""
    from pipelines.ingest import ingest_flow_for
    from tasks.settings import Settings

    return _runner_deployment(
        ingest_flow_for(Settings()).to_deployment(
            name="hourly",
            description=(
                "Every hour: chunk and embed the documents under <data_dir>/documents into the "
                "Chroma collection, upserting by deterministic ids; incremental cleanup removes "
                "the chunks of documents that changed or disappeared."
            ),
            schedules=parse_schedule(schedule, timezone),
            parameters={"paths": None, "collection": None, "cleanup": "incremental"},
            tags=[PROJECT_TAG, "pipeline:ingest"],
        )
    )


def batch_deployment(timezone: str = DEFAULT_TIMEZONE, schedule: str = "none") -> RunnerDeployment:
    """`batch-records/on-demand`: no schedule; run it with the table and the job to use."""
    from pipelines.batch import batch_records_for
    from tasks.settings import Settings

    return _runner_deployment(
        batch_records_for(Settings()).to_deployment(
            name="on-demand",
            description=(
                "On demand only (no schedule): run every row of a table through a prompt template "
                "or a built-in task. The defaults classify the sample support tickets by subject "
                "offline (local embeddings); start it from the UI with other parameters, or with "
                "`prefect deployment run batch-records/on-demand --param input_path=... "
                "--param output_path=... --param template=...`. Paths are relative to the "
                "worker's working directory (the repo root)."
            ),
            parameters=dict(BATCH_PARAMETERS),
            schedules=parse_schedule(schedule, timezone),
            tags=[PROJECT_TAG, "pipeline:batch"],
        )
    )


def _runner_deployment(built: object) -> RunnerDeployment:
    """`to_deployment` is typed sync-or-async; called from sync code it is a deployment."""
    from prefect.deployments.runner import RunnerDeployment

    assert isinstance(built, RunnerDeployment), built
    return built


# A pipeline's deployment is served and deployed once its builder is listed here, by the
# key its schedule has in `build_deployments(schedules=...)`.
DEPLOYMENT_BUILDERS: dict[str, DeploymentBuilder] = {
    "summarize": summarize_deployment,
    "ingest": ingest_deployment,
    "batch": batch_deployment,
}
DEFAULT_SCHEDULES = {
    "summarize": DEFAULT_SUMMARIZE_SCHEDULE,
    "ingest": DEFAULT_INGEST_SCHEDULE,
    "batch": "none",
}


def build_deployments(
    timezone: str = DEFAULT_TIMEZONE, schedules: dict[str, str] | None = None
) -> list[RunnerDeployment]:
    """Every listed pipeline's deployment, schedules in `timezone` (an IANA name); `schedules`
    overrides the default schedule of a pipeline by its key (see `parse_schedule`)."""
    chosen = {**DEFAULT_SCHEDULES, **(schedules or {})}
    return [build(timezone, chosen[key]) for key, build in DEPLOYMENT_BUILDERS.items()]


def describe_schedule(deployment: RunnerDeployment) -> str:
    """When a deployment runs, in words: `cron 0 2 * * * (UTC)`, `every 1:00:00`, `on demand`."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if not deployment.schedules:
        return "on demand"
    described = []
    for entry in deployment.schedules:
        schedule = entry.schedule
        if isinstance(schedule, CronSchedule):
            described.append(f"cron {schedule.cron} ({schedule.timezone or 'UTC'})")
        elif isinstance(schedule, IntervalSchedule):
            described.append(f"every {schedule.interval}")
        else:
            described.append(str(schedule))
    return ", ".join(described)
