"""The deployments as code, built without a server: names, schedules, parameters, tags."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from deployments.definitions import (
    DEPLOYMENT_BUILDERS,
    batch_deployment,
    build_deployments,
    describe_schedule,
    ingest_deployment,
    parse_schedule,
    summarize_deployment,
)
from tests.conftest import REPO


def flow_module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"pipelines.{name}") is not None


def test_nightly_summaries_run_at_two_in_the_given_timezone() -> None:
    deployment = summarize_deployment("Europe/Berlin")
    assert (deployment.flow_name, deployment.name) == ("summarize-transcripts", "nightly")
    assert deployment.entrypoint == "pipelines/summarize.py:summarize_transcripts"
    [entry] = deployment.schedules or []
    assert entry.schedule == CronSchedule(cron="0 2 * * *", timezone="Europe/Berlin")
    assert entry.active
    assert describe_schedule(deployment) == "cron 0 2 * * * (Europe/Berlin)"
    assert deployment.parameters == {"paths": None, "out_dir": None, "force": False}
    assert set(deployment.tags) == {"gristmill", "pipeline:summarize"}
    assert deployment.description and "02:00" in deployment.description


def test_deployment_parameters_leave_engines_to_the_worker_environment() -> None:
    """Settings and the summariser are built where the flow runs, never sent as parameters."""
    schema = summarize_deployment()._parameter_openapi_schema
    assert schema.required == []
    assert {"paths", "out_dir", "force"} <= set(schema.properties)
    assert "settings" not in summarize_deployment().parameters


JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def json_able(schema: dict[str, Any]) -> bool:
    """Whether a property's schema is plain JSON a Run form can fill in: JSON types all the way
    down, no `$ref` to a model (Prefect's schema for Settings) and no untyped value (Any)."""
    if "anyOf" in schema:
        return all(json_able(option) for option in schema["anyOf"])
    if schema.get("type") not in JSON_TYPES:
        return False
    if schema["type"] == "array":
        return json_able(schema.get("items", {}))
    if schema["type"] == "object":
        values = schema.get("additionalProperties")
        return isinstance(values, dict) and json_able(values)
    return True


@pytest.mark.parametrize("key", list(DEPLOYMENT_BUILDERS))
def test_run_forms_show_only_json_parameters(key: str) -> None:
    """The UI's Run form lists the schema's properties: none is an in-process object (settings,
    an engine, a progress callback; pipelines/run_context.py carries those), all are JSON."""
    deployment = DEPLOYMENT_BUILDERS[key]("UTC", "none")
    properties = deployment._parameter_openapi_schema.properties
    assert properties
    in_process = {"settings", "engine", "embedder", "summarizer", "llm", "on_progress"}
    assert not in_process & set(properties), key
    for name, schema in properties.items():
        assert json_able(schema), (key, name, schema)
    assert json.loads(json.dumps(deployment.parameters)) == deployment.parameters


def test_build_deployments_has_one_per_listed_pipeline_with_unique_names() -> None:
    deployments = build_deployments()
    assert len(deployments) == len(DEPLOYMENT_BUILDERS) >= 1
    names = [f"{d.flow_name}/{d.name}" for d in deployments]
    assert len(set(names)) == len(names)
    for deployment in deployments:
        assert "gristmill" in deployment.tags
        assert any(tag.startswith("pipeline:") for tag in deployment.tags)
        assert deployment.description


@pytest.mark.skipif(not flow_module_exists("ingest"), reason="pipelines/ingest.py not written yet")
def test_hourly_ingestion_runs_every_hour() -> None:
    deployment = ingest_deployment("UTC")
    assert (deployment.flow_name, deployment.name) == ("ingest-documents", "hourly")
    [entry] = deployment.schedules or []
    assert isinstance(entry.schedule, IntervalSchedule)
    assert entry.schedule.interval == timedelta(seconds=3600)
    assert deployment.parameters["cleanup"] == "incremental"
    assert set(deployment.tags) == {"gristmill", "pipeline:ingest"}


def test_batch_runs_on_demand_only() -> None:
    deployment = batch_deployment("UTC")
    assert batch_deployment in DEPLOYMENT_BUILDERS.values()
    assert (deployment.flow_name, deployment.name) == ("batch-records", "on-demand")
    assert deployment.entrypoint == "pipelines/batch.py:batch_records"
    assert deployment.schedules == []
    assert describe_schedule(deployment) == "on demand"
    assert set(deployment.tags) == {"gristmill", "pipeline:batch"}


def test_batch_parameters_are_json_that_the_flow_takes() -> None:
    """Runnable from the UI: JSON defaults for every required parameter, no engine objects."""
    deployment = batch_deployment()
    parameters = deployment.parameters
    assert json.loads(json.dumps(parameters)) == parameters
    schema = deployment._parameter_openapi_schema
    assert set(schema.required) == {"input_path", "output_path"} <= set(parameters)
    assert set(parameters) <= set(schema.properties)
    assert not {"settings", "engine", "on_progress"} & set(parameters)
    assert parameters["task"] == "classify" and len(parameters["labels"]) >= 2
    assert (REPO / parameters["input_path"]).is_file()
    assert parameters["output_path"].startswith("data/batch/")  # git-ignored
    labels = schema.properties["labels"]["anyOf"][0]
    assert labels == {"items": {"type": "string"}, "type": "array"}
    assert "Built-in offline task" in schema.properties["task"]["description"]


def test_prefect_yaml_matches_the_deployments_as_code() -> None:
    """prefect.yaml (for work pools) and definitions.py (for `serve`) describe the same runs."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    for deployment in build_deployments():
        entry = by_name[deployment.name]
        assert entry["entrypoint"] == deployment.entrypoint
        assert entry["work_pool"]["name"] == "gristmill"
        assert set(entry["tags"]) == set(deployment.tags)
        assert (Path(REPO) / entry["entrypoint"].split(":")[0]).is_file()
        yaml_schedules = entry.get("schedules") or []
        schedules = deployment.schedules or []
        assert len(yaml_schedules) == len(schedules)
        for spec, created in zip(yaml_schedules, schedules, strict=True):
            schedule = created.schedule
            if "cron" in spec:
                assert isinstance(schedule, CronSchedule)
                assert spec["cron"] == schedule.cron
            else:
                assert isinstance(schedule, IntervalSchedule)
                assert timedelta(seconds=spec["interval"]) == schedule.interval
        assert {k: v for k, v in deployment.parameters.items() if v is not None} == entry.get(
            "parameters", {}
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("every 30s", timedelta(seconds=30)),
        ("every 15m", timedelta(minutes=15)),
        ("Every 2 h", timedelta(hours=2)),
        ("every 1d", timedelta(days=1)),
    ],
)
def test_schedules_in_words_become_intervals(text: str, expected: timedelta) -> None:
    [schedule] = parse_schedule(text, "Europe/Berlin")
    assert schedule.interval == expected and schedule.timezone == "Europe/Berlin"


def test_a_cron_line_and_none_are_schedules_too() -> None:
    [schedule] = parse_schedule("30 1 * * 1-5")
    assert schedule.cron == "30 1 * * 1-5"
    assert parse_schedule("none") == [] and parse_schedule("off") == []


@pytest.mark.parametrize("text", ["every 0s", "every week", "0 2 * *", "99 2 * * *", "hourly"])
def test_a_bad_schedule_is_refused_in_words(text: str) -> None:
    with pytest.raises(ValueError, match="schedule"):
        parse_schedule(text)


def test_serve_takes_the_schedules_from_settings() -> None:
    summarize, ingest, _ = build_deployments("UTC", {"summarize": "every 15s", "ingest": "none"})
    [entry] = summarize.schedules or []
    assert isinstance(entry.schedule, IntervalSchedule)
    assert entry.schedule.interval == timedelta(seconds=15)
    assert ingest.schedules == []
    assert describe_schedule(ingest) == "on demand"


def test_every_pipeline_has_a_shard_deployment_on_the_pool() -> None:
    """`--shards N` with GRISTMILL_WORK_POOL runs `<flow>/shard` (pipelines/shards.py)."""
    from pipelines.shards import SHARD_DEPLOYMENT

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    shards = {d["entrypoint"] for d in config["deployments"] if d["name"] == SHARD_DEPLOYMENT}
    assert shards == {d.entrypoint for d in build_deployments()}
    for entry in config["deployments"]:
        if entry["name"] == SHARD_DEPLOYMENT:
            assert entry["work_pool"]["name"] == "gristmill" and not entry["schedules"]


def test_the_compose_topology_names_only_settings_that_exist() -> None:
    """deployments/docker-compose.yml is not run here (no Docker); its GRISTMILL_ variables
    must at least be settings gristmill reads, and its commands ones that exist."""
    from tasks.settings import Settings

    text = (REPO / "deployments" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    names = set(re.findall(r"\bGRISTMILL_([A-Z_]+)\b", text))
    assert names and {n.lower() for n in names} <= set(Settings.model_fields)
    commands = [s.get("command", "") for s in compose["services"].values()]
    assert any("gristmill server" in c and "--database-url" in c for c in commands)
    assert any("prefect worker start --pool gristmill" in c for c in commands)
