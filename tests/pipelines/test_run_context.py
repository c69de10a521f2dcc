"""Flows take JSON parameters, validated by Prefect; what else a run uses comes from the run
context (pipelines/run_context.py), which reaches child flows and thread-pool tasks."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from prefect import Flow, flow, task
from prefect.exceptions import ParameterTypeError
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines.run_context import RunContext, current_run, run_context
from tasks.reporting import state_report
from tasks.settings import Settings
from tests.conftest import REPO
from tests.support.embedders import HashEmbedder

IN_PROCESS = {"settings", "engine", "embedder", "summarizer", "llm", "on_progress"}


def pipeline_flows() -> dict[str, Flow[..., Any]]:
    """Every flow defined under pipelines/, by its module and name."""
    found: dict[str, Flow[..., Any]] = {}
    for path in sorted((REPO / "pipelines").glob("*.py")):
        if "@flow" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(f"pipelines.{path.stem}")
        for name, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_pipeline_flow_validates_its_parameters_and_takes_no_engine_objects() -> None:
    from prefect.utilities.callables import parameter_schema

    flows = pipeline_flows()
    assert {
        "pipelines.ingest.ingest_documents",
        "pipelines.batch.batch_records",
        "pipelines.summarize.summarize_transcripts",
        "pipelines.ask.answer_question",
    } <= set(flows)
    for name, found in flows.items():
        assert found.should_validate_parameters, name
        assert not IN_PROCESS & set(parameter_schema(found.fn).properties), name


def test_run_context_nests_and_restores() -> None:
    settings, embedder = Settings(_env_file=None), HashEmbedder()  # type: ignore[call-arg]
    assert current_run() == RunContext()
    with run_context(settings=settings, embedder=embedder):
        with run_context(on_progress=print, embedder=None):
            inner = current_run()
            assert (inner.settings, inner.embedder, inner.on_progress) == (settings, None, print)
        assert (current_run().embedder, current_run().on_progress) == (embedder, None)
        assert current_run().run_settings() is settings
    assert current_run() == RunContext()


@task
def settings_seen(_: int) -> Settings | None:
    return current_run().settings


@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))  # type: ignore[arg-type]
def child() -> Settings | None:
    return current_run().settings


@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))  # type: ignore[arg-type]
def parent(tasks: int) -> tuple[list[Settings | None], Settings | None]:
    seen = [future.result() for future in settings_seen.map(range(tasks))]
    return seen, child()


def test_the_run_context_reaches_thread_pool_tasks_and_child_flows(
    prefect_harness: None,
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with run_context(settings=settings):
        seen, in_child = parent(6)
    assert len(seen) == 6 and all(s is settings for s in seen)
    assert in_child is settings
    assert parent(2) == ([None, None], None)  # outside a run context: nothing set


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("pipelines.ingest.ingest_documents", {"shards": "many"}),
        ("pipelines.summarize.summarize_transcripts", {"shards": "many"}),
        ("pipelines.batch.batch_records", {"input_path": "in.csv", "output_path": 3.5j}),
        ("pipelines.ask.answer_question", {"question": "why?", "k": "many"}),
    ],
)
def test_a_wrong_typed_parameter_fails_the_run_before_its_body(
    prefect_harness: None, tmp_path: Path, name: str, parameters: dict[str, Any]
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with run_context(settings=settings, embedder=HashEmbedder()):
        state = pipeline_flows()[name](**parameters, return_state=True)
    assert state.is_failed()
    assert isinstance(state_report(state), ParameterTypeError)
    bad = next(iter(set(parameters) - {"question", "input_path"}))
    assert bad in (state.message or "")
    assert not any(tmp_path.iterdir())  # the body never ran: nothing written


@flow
def quick() -> int:
    return 1


def test_runs_without_work_send_no_heartbeat_and_the_others_keep_prefects(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`heartbeats(False)` is what the CLI uses for a cached re-run (nothing to watch, and the
    end of a run with heartbeats waits up to 1 s for their thread); the setting it turns off is
    Prefect's, so a rename in Prefect fails here rather than silently keeping the wait."""
    from prefect.flow_engine import FlowRunEngine

    from pipelines.run_context import heartbeats

    sent: list[object] = []
    monkeypatch.setattr(
        FlowRunEngine, "_emit_flow_run_heartbeat", lambda self, *a: sent.append(self.flow_run)
    )
    with heartbeats(True):
        assert quick() == 1
    assert len(sent) == 1  # Prefect sends one at the start, then every 180 s
    with heartbeats(False):
        assert quick() == 1
    assert len(sent) == 1
