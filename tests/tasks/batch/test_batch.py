"""Batch records against the local OpenAI-compatible server over real HTTP: limits, faults,
resume, --retry-failed, the Batch API, bad inputs, offline tasks, the flow and the CLI."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tasks.batch.dispatch import run_row_batch
from tasks.batch.engines.batch_api import BatchAPIEngine
from tasks.batch.engines.chat import ChatRowEngine
from tasks.batch.engines.offline import OfflineRowEngine
from tasks.batch.job import RecordJob, load_schema
from tasks.batch.journal import RowJournal
from tasks.batch.limits import RateLimiter
from tasks.batch.plan import build_row_engine
from tasks.batch.reading import RecordReader, Row, iter_row_chunks, preflight
from tasks.batch.results import RowResult
from tasks.errors import ConfigurationError, UsageError
from tasks.settings import Settings
from tests.support.embedders import HashEmbedder
from tests.support.openai_fixtures import fake_openai_fixtures, fake_openai_settings
from tests.support.openai_server import FakeOpenAI, Fault

KEY = "sk-test-batch-secret-0123456789"


server, fake = fake_openai_fixtures(KEY)


def settings_for(server: FakeOpenAI, data_dir: Path, **overrides: Any) -> Settings:
    values = {"llm_max_retries": 2, "batch_rows_per_task": 5} | overrides
    return fake_openai_settings(server, KEY, data_dir, **values)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tickets(tmp_path: Path, count: int = 8) -> Path:
    rows = [[str(i), f"ticket {i}: the printer on floor {i} is on fire"] for i in range(count)]
    return write_csv(tmp_path / "tickets.csv", ["id", "text"], rows)


def classify_job(**overrides: Any) -> RecordJob:
    options: dict[str, Any] = {
        "template": "Classify this ticket: {{ text }}",
        "schema": load_schema("category,priority:int"),
        "id_column": "id",
    }
    return RecordJob(**(options | overrides))


def screened(path: Path, job: RecordJob) -> list[Row]:
    return [row for chunk in iter_row_chunks(preflight(path, job), job, 1000) for row in chunk]


def run_rows(
    path: Path, job: RecordJob, engine: Any, journal: RowJournal | None = None
) -> list[RowResult]:
    rows = [r for r in screened(path, job) if r.problem is None]
    return run_row_batch(rows, engine, journal)


# ------------------------------------------------------------------------- online engine


def test_429_storm_pauses_the_whole_run_and_every_row_ends_ok(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.latency = 0.05
    fake.enqueue(*[Fault.status(429, retry_after=0.4)] * 6)
    job = classify_job()
    engine = ChatRowEngine.from_settings(settings_for(fake, tmp_path), job)
    started = time.monotonic()
    results = run_rows(tickets(tmp_path), job, engine)
    assert [r.status for r in results] == ["ok"] * 8
    assert time.monotonic() - started >= 0.4
    assert engine.limiter.pauses >= 1
    assert fake.calls == 8 + 6  # the SDK retried nothing on its own: max_retries=0
    assert fake.max_concurrency <= 4


def test_5xx_and_timeouts_are_retried_for_that_row(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.enqueue(Fault.status(500), Fault.status(503), Fault.slow(1.5))
    job = classify_job()
    settings = settings_for(
        fake, tmp_path, llm_timeout_s=0.5, llm_max_retries=3, batch_concurrency=1
    )
    results = run_rows(tickets(tmp_path, 3), job, ChatRowEngine.from_settings(settings, job))
    assert [r.status for r in results] == ["ok"] * 3
    assert fake.calls == 6


def test_transient_errors_beyond_the_budget_fail_only_that_row(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.enqueue(*[Fault.status(500)] * 3)
    job = classify_job()
    settings = settings_for(fake, tmp_path, batch_concurrency=1)
    results = run_rows(tickets(tmp_path, 3), job, ChatRowEngine.from_settings(settings, job))
    assert [r.status for r in results] == ["failed", "ok", "ok"]
    assert "HTTP 500" in (results[0].error or "")
    assert KEY not in (results[0].error or "")


def test_malformed_and_schema_invalid_output_is_retried_then_repaired(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.enqueue(Fault.malformed_json(), Fault.schema_invalid())
    job = classify_job()
    settings = settings_for(fake, tmp_path, batch_concurrency=1)
    results = run_rows(tickets(tmp_path, 1), job, ChatRowEngine.from_settings(settings, job))
    assert results[0].status == "ok" and results[0].calls == 3
    assert results[0].result == {"category": "text", "priority": 0}
    repair = fake.requests[-1].body["messages"][-1]["content"]
    assert "could not be used" in repair and "priority" in repair

    fake.reset()
    fake.enqueue(*[Fault.schema_invalid()] * 3)
    results = run_rows(tickets(tmp_path, 1), job, ChatRowEngine.from_settings(settings, job))
    assert results[0].status == "failed" and "did not fit the schema" in (results[0].error or "")


def test_limiter_enforces_requests_and_tokens_per_minute() -> None:
    limiter = RateLimiter(8, rpm=2400)  # 40/s, a second's worth of burst
    started = time.monotonic()
    for _ in range(60):
        with limiter.slot():
            pass
    assert 0.4 <= time.monotonic() - started < 1.5

    limiter = RateLimiter(8, tpm=24_000)  # 400 tokens/s
    started = time.monotonic()
    for _ in range(6):
        with limiter.slot(100) as slot:
            limiter.true_up(slot, 100)
    assert 0.4 <= time.monotonic() - started < 1.5


def test_a_stale_429_does_not_extend_the_pause() -> None:
    limiter = RateLimiter(2)
    with limiter.slot() as early:
        pass
    time.sleep(0.01)
    with limiter.slot() as late:
        limiter.pause(0.2, late)
    limiter.pause(5.0, early)  # sent before the pause began: same overload
    started = time.monotonic()
    with limiter.slot():
        pass
    assert 0.1 < time.monotonic() - started < 1.0
    assert limiter.pauses == 1


# ------------------------------------------------------------------------- resume


def test_a_killed_run_resumes_without_paying_again(fake: FakeOpenAI, tmp_path: Path) -> None:
    job = classify_job()
    settings = settings_for(fake, tmp_path)
    rows = [r for r in screened(tickets(tmp_path, 6), job) if r.problem is None]
    journal = RowJournal.for_job(settings.batch_dir, job)
    run_row_batch(rows[:4], ChatRowEngine.from_settings(settings, job), journal)  # "killed"
    journal.close()
    with journal.path.open("a") as handle:
        handle.write('{"key": "torn')  # the kill hit mid-write
    assert fake.calls == 4

    journal = RowJournal.for_job(settings.batch_dir, job)
    results = run_row_batch(rows, ChatRowEngine.from_settings(settings, job), journal)
    assert [r.status for r in results] == ["ok"] * 6
    assert [r.reused for r in results] == [True] * 4 + [False] * 2
    assert fake.calls == 6

    changed = classify_job(system="Be brief.")  # a new prompt is a new cache key
    assert changed.row_key(rows[0].text) != job.row_key(rows[0].text)


# ------------------------------------------------------------------------- bad inputs


def test_bad_rows_become_invalid_input_at_their_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"id,text\n1,fine\n2,too,many,fields\n3,caf\xe9 latin-1\n1,duplicate id\n,no id\n4,\n5,ok\n"
    )
    rows = screened(path, classify_job())
    assert [r.number for r in rows] == list(range(7))
    problems = [r.problem or "" for r in rows]
    assert problems[0] == "" and problems[6] == ""
    assert "malformed CSV line 3" in problems[1]
    assert "invalid UTF-8" in problems[2]
    assert "duplicate id '1'" in problems[3]
    assert "empty id" in problems[4]
    assert problems[5] == "empty text: nothing to send"


def test_bad_jsonl_lines_become_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": broken\n[1, 2]\n{"text": "\xff\xfe"}\n\n')
    rows = screened(path, classify_job(id_column=None))
    assert [r.problem is None for r in rows] == [True, False, False, False]
    assert "malformed JSON" in (rows[1].problem or "")
    assert "not a JSON object" in (rows[2].problem or "")
    assert "invalid UTF-8" in (rows[3].problem or "")


def test_hash_ids_are_stable_and_unique_for_repeated_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["text"], [["same"], ["same"], ["other"]])
    job = classify_job(id_column=None)
    first, second = screened(path, job), screened(path, job)
    assert [r.row_id for r in first] == [r.row_id for r in second]
    assert len({r.row_id for r in first}) == 3
    assert first[1].row_id == first[0].row_id + "-2"


@pytest.mark.parametrize(
    ("content", "template", "message"),
    [
        (b"", "{{ text }}", "empty"),
        (b"id,body\n1,x\n", "{{ text }}", "uses column.s. text that"),
        (b"id,text\n1,x\n", "{{ ''.__class__.__mro__ }}", "not allowed"),
        (b"id,text\n1,x\n", "{{ text.__class__ }}", "not allowed"),
        (b"id,text\n1,x\n", "{% for %}", "syntax error"),
    ],
)
def test_bad_inputs_and_templates_are_usage_errors(
    tmp_path: Path, content: bytes, template: str, message: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        preflight(path, classify_job(template=template))


def test_a_template_without_an_endpoint_fails_at_once_saying_how_to_configure(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_row_engine(Settings.model_validate({"data_dir": tmp_path}), classify_job())
    assert "OPENAI_API_KEY" in str(caught.value) and "--task" in str(caught.value)


# ------------------------------------------------------------------------- writing

# A run killed while writing: its temp files stay behind, and the kill released their locks.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from tasks.batch.job import RecordJob
from tasks.batch.writing import RecordWriter
writer = RecordWriter(Path(sys.argv[1]), RecordJob(task="summarize"), ["text"])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_temp_files_go_on_the_next_run_and_nothing_else(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tasks.batch.writing import RecordWriter
    from tests.conftest import REPO

    out = tmp_path / "rows.csv"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], cwd=REPO, check=False)
    stale = set(tmp_path.glob(".*.tmp"))
    assert {p.name.rsplit(".", 2)[0] for p in stale} == {".rows.csv", ".rows.dead-letter.jsonl"}
    assert all(p.stat().st_size == 0 for p in stale)
    others = [
        tmp_path / ".other.csv.abcd1234.tmp",  # another output's
        tmp_path / ".rows.csv.gz.abcd1234.tmp",
        tmp_path / ".rows.csv.abcd1234.tmp.keep",  # not our pattern
        tmp_path / "rows.csv.tmp",
    ]
    for path in others:
        path.write_text("keep me")
    job = RecordJob(task="summarize")
    before = set(tmp_path.iterdir())
    live = RecordWriter(out, job, ["text"])  # the next run: it removes only the stale temps
    assert not stale & set(tmp_path.iterdir())
    assert all(path.exists() for path in others)
    working = set(tmp_path.iterdir()) - before
    assert len(working) == 2

    again = RecordWriter(out, job, ["text"])  # one more at once: it leaves the live run's alone
    assert all(path.exists() for path in [*others, *working])
    again.commit()
    live.abort()
    assert sorted(tmp_path.iterdir()) == sorted([*others, out])


# ------------------------------------------------------------------------- offline tasks


def test_offline_tasks_summarize_classify_embed(tmp_path: Path) -> None:
    text = (
        "The quarterly budget review found that cloud costs rose sharply this year. "
        "The team agreed to move batch jobs to spot instances. Maria will draft the plan."
    )
    path = write_csv(
        tmp_path / "t.csv",
        ["text"],
        [[text], ["my invoice shows a wrong amount, refund please"], ["app crashes at login"]],
    )
    summary = run_rows(
        path, RecordJob(task="summarize"), OfflineRowEngine(RecordJob(task="summarize"))
    )
    assert all(r.status == "ok" and r.result["summary"] for r in summary)

    job = RecordJob(task="classify", labels=["billing invoice refund", "app crashes login bug"])
    embedder = HashEmbedder()
    results = run_rows(path, job, OfflineRowEngine(job, embedder))
    assert [r.result["label"] for r in results[1:]] == job.labels
    assert all(-1.0 <= r.result["score"] <= 1.0 for r in results)
    assert embedder.calls[-1] == job.labels or job.labels in embedder.calls

    job = RecordJob(task="embed")
    results = run_rows(path, job, OfflineRowEngine(job, HashEmbedder(dimension=16)))
    assert all(len(r.result["embedding"]) == 16 for r in results)


# ------------------------------------------------------------------------- flow and CLI


def read_output(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# The flow's parameters for classify_job(): JSON, as a deployment run passes them.
CLASSIFY: dict[str, Any] = {
    "template": "Classify this ticket: {{ text }}",
    "schema": "category,priority:int",
    "id_column": "id",
}


def run_parameters(
    settings: Settings | None = None, engine: Any = None, **parameters: Any
) -> tuple[Any, Any]:
    """Run `batch_records` with these parameters (and the run context's settings and engine,
    when given); its state and report."""
    from pipelines.batch import batch_records
    from pipelines.run_context import run_context
    from tasks.reporting import state_report

    with run_context(settings=settings, engine=engine):
        state = batch_records(**parameters, return_state=True)
    return state, state_report(state)


def run_flow(src: Path, out: Path, **parameters: Any) -> tuple[Any, Any]:
    return run_parameters(input_path=str(src), output_path=str(out), **parameters)


def test_flow_writes_every_row_once_then_retry_failed_fixes_only_the_failed(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    src = tickets(tmp_path, 6)
    with src.open("a", encoding="utf-8") as handle:
        handle.write("1,duplicate\n")
    out = tmp_path / "out.csv"
    job = classify_job()
    settings = settings_for(fake, tmp_path / "data", batch_concurrency=1, batch_rows_per_task=10)
    fake.enqueue(*[Fault.status(500)] * 3)  # the first row outlives its retries
    engine = ChatRowEngine.from_settings(settings, job)
    state, report = run_flow(src, out, settings=settings, engine=engine, **CLASSIFY)
    assert state.is_failed()
    assert (report.rows, report.ok, report.failed, report.invalid_input) == (7, 5, 1, 1)
    assert "row 0 (0): failed: " in state.message and "HTTP 500" in state.message
    rows = read_output(out)
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4", "5", "1"]
    assert [r["status"] for r in rows] == ["failed"] + ["ok"] * 5 + ["invalid_input"]
    assert rows[1]["category"] == "text" and rows[1]["priority"] == "0"
    dead = [json.loads(line) for line in (tmp_path / "out.dead-letter.jsonl").open()]
    assert [d["row_number"] for d in dead] == [0, 6]
    assert any("record-output: passed" in q for q in report.quality)

    fake.reset()
    engine = ChatRowEngine.from_settings(settings, job)
    state, report = run_flow(
        src, out, settings=settings, engine=engine, retry_failed=True, **CLASSIFY
    )
    assert fake.calls == 1  # only the failed row; the invalid one fails again without a call
    assert (report.ok, report.failed, report.invalid_input, report.reused) == (6, 0, 1, 5)
    assert [r["status"] for r in read_output(out)] == ["ok"] * 6 + ["invalid_input"]


def test_flow_runs_from_json_parameters_alone(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deployment run does: JSON parameters in, settings and engine from the environment."""
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    fake.latency = 0.05
    template = tmp_path / "classify.j2"
    template.write_text("Classify this ticket: {{ text }}", encoding="utf-8")
    parameters = {
        "input_path": str(tickets(tmp_path, 8)),
        "output_path": str(tmp_path / "out.jsonl"),
        "template": str(template),
        "schema": "category,priority:int",
        "id_column": "id",
        "system": "You triage support tickets.",
        "model": "triage-model",
        "temperature": 0.7,
        "concurrency": 2,
    }
    assert json.loads(json.dumps(parameters)) == parameters
    state, report = run_parameters(**parameters)
    assert state.is_completed(), state.message
    assert (report.rows, report.ok, report.engine, report.model) == (8, 8, "openai", "triage-model")
    chats = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 8
    assert {(c["model"], c["temperature"]) for c in chats} == {("triage-model", 0.7)}
    assert chats[0]["messages"][0] == {"role": "system", "content": "You triage support tickets."}
    assert chats[0]["messages"][-1]["content"].startswith("Classify this ticket: ticket ")
    assert chats[0]["response_format"]["type"] == "json_schema"
    assert 1 < fake.max_concurrency <= 2
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert [line["status"] for line in lines] == ["ok"] * 8


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"template": "{{ subject }}"}, "uses column(s) subject that the input does not have"),
        ({"task": "classify", "labels": ["only one"]}, "at least two labels"),
        ({"task": "summarize", "concurrency": 0}, "concurrency: Input should be greater"),
        ({"task": "summarize", "mode": "fast"}, "--mode must be online or batch-api"),
    ],
)
def test_bad_parameters_fail_the_run_at_once_with_the_reason(
    prefect_harness: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parameters: dict[str, Any],
    reason: str,
) -> None:
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "out.csv"
    state, error = run_flow(tickets(tmp_path, 2), out, **parameters)
    assert state.is_failed()
    assert reason in state.message
    assert isinstance(error, UsageError) and reason in str(error)
    assert not out.exists()


def test_the_deployment_defaults_classify_the_sample_tickets_offline(
    prefect_harness: None, local_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.definitions import BATCH_PARAMETERS
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the deployment's paths are relative to the worker's directory
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
    state, report = run_parameters(**{**BATCH_PARAMETERS, "output_path": str(tmp_path / "t.csv")})
    assert state.is_completed(), state.message
    assert (report.rows, report.ok, report.engine) == (60, 60, "offline-embedding")
    labels = {r["subject"]: r["label"] for r in read_output(tmp_path / "t.csv")}
    assert set(labels.values()) <= set(BATCH_PARAMETERS["labels"])  # type: ignore[arg-type]
    assert labels["Question about switching to monthly billing"] == "billing"
    assert labels["Robot making a grinding noise"] == "robot hardware"
    assert labels["Feature request: export to our data warehouse"] == "feature request"
    assert labels["Request for store-level user permissions"] == "account access"


def test_batch_api_lifecycle_resubmits_only_failed_and_expired_lines(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    src = tickets(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    job = classify_job()
    settings = settings_for(fake, tmp_path / "data")
    fake.batch_failed_ids = {"row-1"}
    fake.batch_expire_after = 3  # lines 3 and 4 expire

    def heal(status: str, counts: dict[str, Any]) -> None:
        fake.batch_failed_ids = set()
        fake.batch_expire_after = None

    engine = BatchAPIEngine.from_settings(settings, job, poll_interval_s=0.01, on_poll=heal)
    state, report = run_flow(
        src, out, settings=settings, engine=engine, mode="batch-api", **CLASSIFY
    )
    assert state.is_completed(), report.failures
    assert report.ok == 5 and report.llm_calls == 5
    assert len(engine.batches) == 2
    second = sorted((settings.batch_dir / "requests").glob("*-r2.jsonl"))
    resent = [json.loads(line)["custom_id"] for line in second[0].open()]
    assert resent == ["row-1", "row-3", "row-4"]
    lines = [json.loads(line) for line in out.open()]
    assert [line["status"] for line in lines] == ["ok"] * 5


def test_batch_api_lines_that_keep_failing_end_failed_with_reason(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job = classify_job()
    fake.batch_failed_ids = {"row-0"}
    engine = BatchAPIEngine.from_settings(
        settings_for(fake, tmp_path), job, poll_interval_s=0.01, rounds=2
    )
    results = run_rows(tickets(tmp_path, 2), job, engine)
    assert [r.status for r in results] == ["failed", "ok"]
    assert "after 2 rounds" in (results[0].error or "")


def test_cli_json_report_and_exit_codes(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import app

    src = tickets(tmp_path, 4)
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    base = ["batch", str(src), "--output", str(tmp_path / "o.parquet"), "--id-column", "id"]

    result = runner.invoke(app, [*base, "--template", "Say {{ text }}"])
    assert result.exit_code == 2 and "OPENAI_API_KEY" in result.output

    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    result = runner.invoke(app, [*base, "--template", "{{ missing }}"])
    assert result.exit_code == 2 and "missing" in result.output

    result = runner.invoke(
        app, [*base, "--template", "Classify {{ text }}", "--schema", "label", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert {"rows", "ok", "failed", "invalid_input", "llm_calls", "usage", "duration_s"} <= set(
        report
    )
    assert (report["rows"], report["ok"], report["llm_calls"]) == (4, 4, 4)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("status").to_pylist() == ["ok"] * 4
    assert RecordReader(tmp_path / "o.parquet").columns[:3] == ["id", "text", "row_id"]


def test_parquet_input_and_a_users_expectation_suite_on_the_output(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "tickets.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "text": ["printer on fire", "login fails", "refund"]}),
        src,
    )
    suite = tmp_path / "suite.json"
    expectations = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "category"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "status",
                                                                 "value_set": ["ok"]}},
    ]  # fmt: skip
    suite.write_text(json.dumps({"name": "mine", "expectations": expectations}))
    settings = settings_for(fake, tmp_path / "data")
    out = tmp_path / "out.jsonl"
    state, report = run_flow(src, out, **CLASSIFY, expectations_path=str(suite), settings=settings)
    assert state.is_completed(), state.message
    assert (report.rows, report.ok) == (3, 3)
    assert any(
        q.startswith("user-expectations: passed (2 checks on 3 rows") for q in report.quality
    )
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]

    # the fake model answers priority 0: a suite that wants priorities of 1 or more fails the
    # run with the expectation named, while every row is still written
    expectations.append(
        {"type": "expect_column_values_to_be_between",
         "kwargs": {"column": "priority", "min_value": 1}}
    )  # fmt: skip
    suite.write_text(json.dumps({"name": "mine", "expectations": expectations}))
    state, report = run_flow(
        src, tmp_path / "again.jsonl", **CLASSIFY, expectations_path=str(suite), settings=settings
    )
    assert state.is_failed()
    assert any("priority" in error for error in report.quality_errors), report.quality_errors
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 3

    suite.write_text("not json")
    state, report = run_flow(
        src, tmp_path / "x.jsonl", **CLASSIFY, expectations_path=str(suite), settings=settings
    )
    assert state.is_failed() and "not a GX expectation suite" in (state.message or "")


def test_a_users_input_suite_makes_failing_rows_invalid_before_any_llm_call(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    src = tmp_path / "tickets.csv"
    src.write_text(
        "id,text,lang\n"
        "a,printer on fire,en\n"
        "b,imprimante en feu,fr\n"
        "c,login fails,en\n"
        "d,refund please,\n"
    )
    suite = tmp_path / "input-suite.json"
    expectations = [
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "lang", "value_set": ["en"]}},
        {"type": "expect_column_value_lengths_to_be_between",
         "kwargs": {"column": "text", "max_value": 15}},
    ]  # fmt: skip
    suite.write_text(json.dumps({"name": "mine", "expectations": expectations}))
    settings = settings_for(fake, tmp_path / "data")
    out = tmp_path / "out.jsonl"
    calls_before = fake.calls
    state, report = run_flow(
        src, out, **CLASSIFY, input_expectations_path=str(suite), settings=settings
    )
    assert state.is_failed()
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["a", "b", "c", "d"]  # every row once, in order
    assert [rows[k]["status"] for k in "abcd"] == ["ok", "invalid_input", "ok", "invalid_input"]
    assert rows["b"]["error"] == (  # every expectation the row fails
        "input suite: expect_column_values_to_be_in_set on lang; "
        "expect_column_value_lengths_to_be_between on text"
    )
    # an empty CSV cell is "" (not null): it fails the set, not the null check
    assert rows["d"]["error"] == "input suite: expect_column_values_to_be_in_set on lang"
    assert (report.ok, report.invalid_input, report.llm_calls) == (2, 2, 2)
    assert fake.calls - calls_before == 2  # no LLM call for the rows the suite failed
    assert any(q.startswith("user-input-expectations: FAILED") for q in report.quality)

    # an expectation on a column the input lacks names no row: the whole chunk is invalid
    suite.write_text(json.dumps({"expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "priority"}}
    ]}))  # fmt: skip
    state, report = run_flow(
        src, tmp_path / "o2.jsonl", **CLASSIFY, input_expectations_path=str(suite),
        settings=settings,
    )  # fmt: skip
    assert (report.rows, report.invalid_input, report.llm_calls) == (4, 4, 0)
    first = json.loads((tmp_path / "o2.jsonl").read_text().splitlines()[0])
    assert first["error"].startswith("input suite: whole chunk: priority: ")

    suite.write_text("[1, 2]")
    state, _ = run_flow(
        src, tmp_path / "o3.jsonl", **CLASSIFY, input_expectations_path=str(suite),
        settings=settings,
    )  # fmt: skip
    assert state.is_failed()
    assert (state.message or "").startswith(f"--input-expectations {suite}: not a GX")


def test_unreadable_jsonl_lines_get_their_own_ids_and_may_be_fixed_for_retry_failed(
    prefect_harness: None, tmp_path: Path
) -> None:
    good = [
        {"id": str(i), "text": f"Ticket {i}: the printer on floor {i} is jammed again."}
        for i in range(3)
    ]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]), "[1, 2]", json.dumps(good[2])]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    parameters = {"task": "summarize", "id_column": "id", "text_column": "text"}
    state, report = run_flow(src, out, **parameters)
    assert (report.ok, report.invalid_input) == (3, 2)
    rows = [json.loads(line) for line in out.open()]
    ids = [row["row_id"] for row in rows]
    assert len(set(ids)) == 5 and ids[1] != ids[3]

    fixed = [
        {"id": "a", "text": "Ticket a: the coffee machine leaks."},
        {"id": "b", "text": "Ticket b: no heating."},
    ]
    lines[1], lines[3] = json.dumps(fixed[0]), json.dumps(fixed[1])
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    state, report = run_flow(src, out, retry_failed=True, **parameters)
    assert state.is_completed(), state.message
    assert (report.ok, report.invalid_input, report.reused) == (5, 0, 3)
    assert [json.loads(line)["row_id"] for line in out.open()] == ["0", "a", "1", "b", "2"]
