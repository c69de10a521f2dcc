"""End to end with real parts: a Prefect server, the `gristmill` process work pool, the
deployments from prefect.yaml, a worker process, and the UI in headless Chromium.

One module-scoped fixture starts the server, deploys, triggers a good summarisation (two sample
transcripts), a bad one (an empty transcript), an ingestion of the sample documents and a batch
run with the batch deployment's defaults (the sample tickets, classified offline), and waits for
all of them to finish; each test then checks one thing through the REST API or the UI, in any
order. The ingestion and batch runs need the local embedding model (`make setup` provisions it).
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.definitions import BATCH_PARAMETERS
from tasks.model_files import missing_files
from tests.conftest import REPO, SAMPLE_TRANSCRIPTS
from tests.support.browser import browse, evaluate_when_ready
from tests.support.prefect_server import (
    FAST_SCHEDULER,
    TERMINAL,
    PrefectServer,
    prefect_cli,
    prefect_server_process,
    start,
    stop,
    tail,
    wait_for,
)
from tests.support.scheduled import (
    check_runs_page_shows,
    check_scheduled_runs_completed,
    scheduled_runs_completed,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

POOL = "gristmill"
DEPLOYMENT = "summarize-transcripts/nightly"
REPORT_KEY = "summarize-transcripts-report"
SAMPLES = ("weekly-standup.txt", "customer-call.srt")
INGEST_DEPLOYMENT = "ingest-documents/hourly"
INGEST_REPORT_KEY = "ingest-documents-report"
SAMPLE_DOCUMENTS = REPO / "data" / "documents"
BATCH_DEPLOYMENT = "batch-records/on-demand"
BATCH_REPORT_KEY = "batch-records-report"
MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
NEEDS_MODEL = pytest.mark.skipif(
    bool(missing_files(MODEL_DIR)), reason="local model files not provisioned (make setup)"
)
# Screenshots go to a temp dir unless asked for: `make screenshots` refreshes docs/img.
SCREENSHOTS = Path(os.environ.get("GRISTMILL_SCREENSHOTS") or tempfile.mkdtemp(prefix="shots-"))


@dataclass
class FinishedRuns:
    server: PrefectServer
    good: dict[str, Any]
    bad: dict[str, Any]
    bad_input: Path
    ingest: dict[str, Any] | None
    batch: dict[str, Any] | None
    batch_output: Path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port with a throwaway PREFECT_HOME."""
    with prefect_server_process(
        tmp_path_factory.mktemp("prefect-server"), **FAST_SCHEDULER
    ) as server:
        yield server


@pytest.fixture(scope="module")
def finished_runs(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinishedRuns]:
    """Deploy from prefect.yaml, start a worker, run every pipeline (and a bad summarisation)."""
    server = prefect_server
    data = tmp_path_factory.mktemp("data")
    (data / "transcripts").mkdir()
    for name in SAMPLES:
        shutil.copy(SAMPLE_TRANSCRIPTS / name, data / "transcripts" / name)
    shutil.copytree(SAMPLE_DOCUMENTS, data / "documents")
    bad_input = data / "incoming" / "empty.txt"
    bad_input.parent.mkdir()
    bad_input.write_text("")
    batch_output = data / "batch" / "support-tickets.classified.csv"

    setup_log = server.logs / "setup.log"
    prefect_cli("work-pool", "create", POOL, "--type", "process", env=server.env, log=setup_log)
    prefect_cli("deploy", "--all", env=server.env, log=setup_log)
    deployment = server.get(f"/deployments/name/{DEPLOYMENT}")
    assert deployment["work_pool_name"] == POOL
    assert "pipeline:summarize" in deployment["tags"]

    def run(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        deployment_id = server.get(f"/deployments/name/{name}")["id"]
        return server.post(
            f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters}
        )

    runs = {
        "good": run(DEPLOYMENT, {}),
        "bad": run(DEPLOYMENT, {"paths": [str(bad_input)]}),
    }
    if not missing_files(MODEL_DIR):
        runs["ingest"] = run(INGEST_DEPLOYMENT, {})
        # The deployment's own defaults, but written under the throwaway data dir.
        runs["batch"] = run(BATCH_DEPLOYMENT, {"output_path": str(batch_output)})
    worker_env = {
        **server.env,
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_MODEL_DIR": str(MODEL_DIR),
        "GRISTMILL_ENGINE": "offline",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    worker = start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "4"],
        worker_env,
        server.logs / "worker.log",
    )

    def finished() -> dict[str, dict[str, Any]] | None:
        assert worker.poll() is None, f"the worker exited:\n{tail(server.logs / 'worker.log')}"
        now = {key: server.get(f"/flow_runs/{run['id']}") for key, run in runs.items()}
        return now if all(r["state"]["type"] in TERMINAL for r in now.values()) else None

    try:
        done = wait_for(
            "the flow runs", finished, 240, lambda: tail(server.logs / "worker.log", 80)
        )
        yield FinishedRuns(
            server=server,
            good=done["good"],
            bad=done["bad"],
            bad_input=bad_input,
            ingest=done.get("ingest"),
            batch=done.get("batch"),
            batch_output=batch_output,
        )
    finally:
        stop(worker)


def task_runs_of(server: PrefectServer, run: dict[str, Any]) -> list[dict[str, Any]]:
    return server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})


def artifact_of(server: PrefectServer, run: dict[str, Any], key: str) -> dict[str, Any]:
    """The run's one artifact with `key`."""
    artifacts = server.post("/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})
    mine = [a for a in artifacts if a["flow_run_id"] == run["id"]]
    assert len(mine) == 1, artifacts
    return mine[0]


def ended(run: dict[str, Any] | None, state: str, name: str) -> dict[str, Any]:
    """`run`, checked to be there, named `name` and ended in `state`."""
    assert run is not None
    assert run["state"]["type"] == state, run["state"]
    assert run["name"] == name
    return run


def completed_with_report(
    finished_runs: FinishedRuns, run: dict[str, Any] | None, name: str, report_key: str
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """`run`, checked to be there, named `name`, Completed, with every task run Completed and
    one Markdown artifact under `report_key`: (the run, its task runs, the artifact's text)."""
    server = finished_runs.server
    run = ended(run, "COMPLETED", name)
    task_runs = task_runs_of(server, run)
    assert {t["state"]["type"] for t in task_runs} == {"COMPLETED"}, task_runs
    report = artifact_of(server, run, report_key)
    assert report["type"] == "markdown"
    return run, task_runs, str(report["data"])


def test_summarize_run_completes_with_task_runs_and_report(finished_runs: FinishedRuns) -> None:
    run, task_runs, report = completed_with_report(
        finished_runs, finished_runs.good, "summarize transcripts", REPORT_KEY
    )
    assert run["state"]["message"].startswith("2 transcripts: 2 summarised")
    names = {t["name"] for t in task_runs}
    # small transcripts share a group task named after its first file ("summarize a.txt and 1
    # more"), which parses, checks and writes them; a transcript of several chunks leaves its
    # group and gets its own tasks, down to "write <stem>"
    groups = {n for n in names if n.startswith("summarize ") and " more" in n}
    for sample in SAMPLES:
        stem = Path(sample).stem
        assert f"write {stem}" in names or any(sample in g or " and " in g for g in groups), names
    assert all(Path(sample).stem in report for sample in SAMPLES)


def test_empty_transcript_fails_with_its_reason_in_the_state(finished_runs: FinishedRuns) -> None:
    run = ended(finished_runs.bad, "FAILED", "summarize empty.txt")
    message = run["state"]["message"]
    assert "1 failed" in message
    assert "empty.txt: file is empty" in message


@NEEDS_MODEL
def test_ingest_run_completes_with_every_sample_document_and_report(
    finished_runs: FinishedRuns,
) -> None:
    run, task_runs, report = completed_with_report(
        finished_runs, finished_runs.ingest, "ingest documents", INGEST_REPORT_KEY
    )
    documents = sum(1 for path in SAMPLE_DOCUMENTS.rglob("*") if path.is_file())
    assert run["state"]["message"].startswith(f"{documents} added, 0 updated"), run["state"]
    assert "0 quarantined" in run["state"]["message"]
    assert "pipeline:ingest" in run["tags"]
    assert any(tag.startswith("embedder:all-MiniLM-L6-v2") for tag in run["tags"]), run["tags"]
    assert any(t["name"].startswith("ingest ") for t in task_runs), task_runs
    assert f"| Documents added | {documents} |" in report, report


@NEEDS_MODEL
def test_batch_run_from_the_deployment_defaults_classifies_every_ticket(
    finished_runs: FinishedRuns,
) -> None:
    run, task_runs, report = completed_with_report(
        finished_runs, finished_runs.batch, "batch support-tickets.csv", BATCH_REPORT_KEY
    )
    assert run["state"]["message"] == "60 rows: 60 ok (0 reused), 0 failed, 0 invalid input"
    assert {"pipeline:batch", "engine:offline-embedding"} <= set(run["tags"])
    assert [t["name"] for t in task_runs] == ["support-tickets.csv rows 0-59"]
    assert "offline-embedding" in report and "record-output: passed" in report
    with finished_runs.batch_output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and {r["status"] for r in rows} == {"ok"}
    assert {r["label"] for r in rows} <= set(BATCH_PARAMETERS["labels"])  # type: ignore[arg-type]


def test_runs_page_shows_the_runs(finished_runs: FinishedRuns, chromium: str) -> None:
    """The dashboard lists every run by name; screenshots for the README's 'Watching runs'."""
    server, good, bad = finished_runs.server, finished_runs.good, finished_runs.bad
    dom = browse(chromium, f"{server.url}/runs", "--dump-dom")
    assert good["name"] in dom, dom[-3000:]
    assert bad["name"] in dom
    for other in (finished_runs.ingest, finished_runs.batch):
        if other is not None:
            assert other["name"] in dom, dom[-3000:]
    screenshot(chromium, f"{server.url}/runs", "runs.png")
    screenshot(chromium, f"{server.url}/runs/flow-run/{good['id']}", "flow-run.png")


def test_failed_run_page_says_which_transcript_failed_and_why(
    finished_runs: FinishedRuns, chromium: str
) -> None:
    server, bad = finished_runs.server, finished_runs.bad
    page = f"{server.url}/runs/flow-run/{bad['id']}"
    dom = browse(chromium, page, "--dump-dom")
    assert "empty.txt: file is empty" in dom, dom[-3000:]
    screenshot(chromium, page, "failed-run.png")


# Where the report table's "Data quality" header ends, and where its scrolling boxes clip it.
DATA_QUALITY_PLACE = """(() => {
  const th = [...document.querySelectorAll('th')]
    .find(e => e.textContent.trim() === 'Data quality');
  if (!th) return null;
  let clip = window.innerWidth;
  for (let e = th.parentElement; e; e = e.parentElement) {
    if (getComputedStyle(e).overflowX !== 'visible') {
      clip = Math.min(clip, e.getBoundingClientRect().right);
    }
  }
  return {right: th.getBoundingClientRect().right, clip: clip};
})()"""


def test_the_report_shows_its_data_quality_column_in_a_1400_px_window(
    finished_runs: FinishedRuns, chromium: str
) -> None:
    """Long paths once pushed the column past the table's scroll edge, out of sight."""
    server = finished_runs.server
    for run in (finished_runs.good, finished_runs.bad):
        artifact = artifact_of(server, run, REPORT_KEY)
        page = f"{server.url}/artifacts/artifact/{artifact['id']}"
        place = evaluate_when_ready(chromium, page, DATA_QUALITY_PLACE, width=1400)
        assert place["right"] <= place["clip"], (page, place)


def screenshot(chromium: str, url: str, name: str) -> None:
    """Save `url` as SCREENSHOTS/`name` (docs/img, linked from docs/watching-runs.md, with
    `make screenshots`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name
    target.unlink(missing_ok=True)
    browse(chromium, url, f"--screenshot={target}")
    assert target.stat().st_size > 10_000, f"{name} looks blank"


def test_gristmill_serve_runs_a_deployment_on_demand(
    finished_runs: FinishedRuns, tmp_path: Path
) -> None:
    """`gristmill serve` (one process, no work pool): registers every deployment with its
    schedule, and runs one when asked. Last in the module: it takes over the deployments."""
    server = finished_runs.server
    data = tmp_path / "data"
    (data / "transcripts").mkdir(parents=True)
    shutil.copy(SAMPLE_TRANSCRIPTS / "weekly-standup.txt", data / "transcripts")
    env = {
        **server.env,
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_MODEL_DIR": str(MODEL_DIR),
        "GRISTMILL_ENGINE": "offline",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }

    log = server.logs / "serve.log"
    # the worker's deployments (prefect.yaml) go, so serve's own ones are what runs
    for name in (DEPLOYMENT, INGEST_DEPLOYMENT, BATCH_DEPLOYMENT):
        found = server.request("GET", f"/deployments/name/{name}")
        if found.status_code == 200:
            server.request("DELETE", f"/deployments/{found.json()['id']}").raise_for_status()
    serving = start([sys.executable, "-m", "pipelines.cli", "serve"], env, log)
    try:

        def served() -> dict[str, Any] | None:
            assert serving.poll() is None, f"serve exited:\n{tail(log)}"
            found = server.request("GET", f"/deployments/name/{DEPLOYMENT}")
            return dict(found.json()) if found.status_code == 200 else None

        deployment = wait_for("serve to register", served, 120, lambda: tail(log))
        assert deployment["schedules"] and deployment["schedules"][0]["schedule"]["cron"]
        run = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})

        def finished() -> dict[str, Any] | None:
            assert serving.poll() is None, f"serve exited:\n{tail(log)}"
            now = server.get(f"/flow_runs/{run['id']}")
            return dict(now) if now["state"]["type"] in TERMINAL else None

        done = wait_for("the served run", finished, 180, lambda: tail(log, 80))
        assert done["state"]["type"] == "COMPLETED", tail(log, 80)
        assert (data / "summaries" / "weekly-standup.json").is_file()
    finally:
        stop(serving)


@pytest.fixture(scope="module")
def scheduled_runs(
    finished_runs: FinishedRuns, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """The promise of a schedule, kept (`tests.support.scheduled`). After the on-demand tests:
    it takes over the nightly deployment."""
    with scheduled_runs_completed(
        finished_runs.server, tmp_path_factory.mktemp("scheduled"), MODEL_DIR
    ) as runs:
        yield runs


def test_scheduled_runs_are_created_by_the_server_and_run_to_completion(
    scheduled_runs: dict[str, dict[str, Any]],
) -> None:
    check_scheduled_runs_completed(scheduled_runs)


def test_runs_page_shows_the_scheduled_runs(
    finished_runs: FinishedRuns, scheduled_runs: dict[str, dict[str, Any]], chromium: str
) -> None:
    check_runs_page_shows(chromium, finished_runs.server.url, scheduled_runs)
