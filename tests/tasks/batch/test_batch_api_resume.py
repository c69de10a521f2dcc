"""Batch API jobs that survive a kill: submitted batches are journaled before polling, a re-run
resumes them (or cancels them when the job changed), and every batch goes out up front.

Against the local HTTP server speaking the Files and Batch endpoints (tests/support).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tasks.batch.dispatch import run_row_batch
from tasks.batch.engines.batch_api import BatchAPIEngine
from tasks.batch.job import RecordJob, load_schema
from tasks.batch.journal import BatchLedger, RowJournal, SubmittedBatch
from tasks.batch.reading import Row, iter_row_chunks, preflight
from tasks.batch.results import RowResult
from tasks.settings import Settings
from tests.conftest import REPO
from tests.support.openai_server import FakeOpenAI
from tests.support.prefect_server import user_env
from tests.support.tables import write_csv

KEY = "sk-test-batch-resume-0123456789"
TEMPLATE = "Classify this ticket: {{ text }}"
NEVER = 10**9
"""Polls a batch needs before it ends: it stays in progress until `release_batches()`."""


class Killed(BaseException):
    """Stands in for kill -9 in-process: nothing after it runs, nothing catches it."""


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def tickets(path: Path, count: int) -> Path:
    return write_csv(
        path, ([i, f"ticket {i}: the printer on floor {i} is on fire"] for i in range(count))
    )


def classify_job(**overrides: Any) -> RecordJob:
    options = {
        "template": TEMPLATE,
        "schema": load_schema("category,priority:int"),
        "id_column": "id",
    }
    return RecordJob(**(options | overrides))


def settings_for(server: FakeOpenAI, data_dir: Path, rows_per_batch: int) -> Settings:
    values = {
        "openai_base_url": server.base_url,
        "openai_api_key": SecretStr(KEY),
        "data_dir": data_dir,
        "llm_timeout_s": 5.0,
        "batch_rows_per_task": rows_per_batch,
    }
    return Settings.model_validate(values)


def usable_rows(path: Path, job: RecordJob) -> list[Row]:
    chunks = iter_row_chunks(preflight(path, job), job, 10_000)
    return [row for chunk in chunks for row in chunk if row.problem is None]


def ticket_job(
    fake: FakeOpenAI, tmp_path: Path, count: int, rows_per_batch: int
) -> tuple[RecordJob, Settings, list[Row]]:
    """The classify job, its settings on `fake` and `count` ticket rows to send."""
    job = classify_job()
    settings = settings_for(fake, tmp_path / "data", rows_per_batch)
    return job, settings, usable_rows(tickets(tmp_path / "t.csv", count), job)


def run_batches(
    settings: Settings, job: RecordJob, rows: list[Row], journal: bool = False, **options: Any
) -> tuple[BatchAPIEngine, list[RowResult]]:
    """`rows` through a Batch API engine polling every 10 ms (`options` for the engine), with
    the job's row journal when `journal`: the engine, closed, and the results."""
    engine = BatchAPIEngine.from_settings(settings, job, poll_interval_s=0.01, **options)
    journaled = RowJournal.for_job(settings.batch_dir, job) if journal else None
    try:
        return engine, run_row_batch(rows, engine, journaled)
    finally:
        engine.close()
        if journaled is not None:
            journaled.close()


def killed_mid_poll(
    fake: FakeOpenAI, settings: Settings, job: RecordJob, rows: list[Row], output: Path
) -> list[str]:
    """A run whose batches are all created and in progress (`fake` never ends them until
    `release_batches()`) when it dies: their ids."""
    fake.batch_polls = NEVER

    def die(status: str, counts: dict[str, Any]) -> None:
        raise Killed

    engine = BatchAPIEngine.from_settings(
        settings, job, output=output, poll_interval_s=0.01, on_poll=die
    )
    journal = RowJournal.for_job(settings.batch_dir, job)
    with pytest.raises(Killed):
        run_row_batch(rows, engine, journal)
    engine.close()
    journal.close()
    return engine.batches


def peak_open(server: FakeOpenAI) -> int:
    """Most batches open (created, not yet ended) at the same time."""
    open_now = peak = 0
    for _, event, _ in server.batch_events:
        open_now += {"created": 1, "ended": -1}.get(event, 0)
        peak = max(peak, open_now)
    return peak


def created(server: FakeOpenAI) -> list[str]:
    return [batch_id for _, event, batch_id in server.batch_events if event == "created"]


def test_all_batches_are_created_before_the_first_one_ends(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job, settings, rows = ticket_job(fake, tmp_path, 32, rows_per_batch=5)
    _, results = run_batches(settings, job, rows)

    assert [r.status for r in results] == ["ok"] * 32
    events = [event for _, event, _ in fake.batch_events]
    assert events.count("created") == 7  # 32 rows, 5 a batch
    assert events.index("ended") > max(i for i, e in enumerate(events) if e == "created")
    assert fake.batch_lines == 32


def test_the_enqueued_token_limit_paces_the_batches_without_failing_rows(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job = classify_job()
    rows = usable_rows(tickets(tmp_path / "t.csv", 30), job)
    for attempt, rounds in (("unlimited", 3), ("limited", 1)):
        settings = settings_for(fake, tmp_path / attempt, rows_per_batch=5)
        _, results = run_batches(settings, job, rows, rounds=rounds)
        assert [r.status for r in results] == ["ok"] * 30, attempt  # in one round when limited
        if attempt == "unlimited":
            room = int(2.5 * max(fake.batch_tokens.values()))  # two batches fit, three do not
            fake.reset()
            fake.batch_polls, fake.batch_token_limit = 2, room

    assert fake.batch_lines == 30
    assert len(created(fake)) == 6  # each batch accepted once ...
    assert [e for _, e, _ in fake.batch_events].count("refused") > 0  # ... some after a refusal
    assert peak_open(fake) == 2


def test_a_rerun_after_a_kill_polls_the_journaled_batches_and_sends_nothing_again(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job, settings, rows = ticket_job(fake, tmp_path, 10, rows_per_batch=4)
    output = tmp_path / "out.jsonl"
    first = killed_mid_poll(fake, settings, job, rows, output)
    assert len(first) == 3
    ledger = BatchLedger(BatchLedger.path_for(settings.batch_dir, output))
    assert [b.batch_id for b in ledger.batches()] == first
    assert sorted(k for b in ledger.batches() for k in b.rows.values()) == sorted(
        r.key for r in rows
    )
    ledger.close()

    fake.release_batches()
    uploads = len(fake.files)
    engine, results = run_batches(settings, job, rows, journal=True, output=output)

    assert [r.status for r in results] == ["ok"] * 10
    assert engine.batches == [] and engine.resumed == first
    assert len(fake.files) == uploads + 3  # only the three batches' output files
    assert fake.batch_lines == 10


def test_a_journaled_batch_the_api_does_not_know_is_sent_again(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job, settings, rows = ticket_job(fake, tmp_path, 6, rows_per_batch=4)
    killed_mid_poll(fake, settings, job, rows, tmp_path / "out.jsonl")
    fake.reset()  # another endpoint: the journaled batch ids mean nothing there
    fake.batch_polls = 1

    engine, results = run_batches(settings, job, rows, output=tmp_path / "out.jsonl", rounds=1)
    assert [r.status for r in results] == ["ok"] * 6
    assert len(engine.batches) == 2 and fake.batch_lines == 6


def test_failed_lines_of_a_resumed_batch_are_the_only_ones_sent_again(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    job, settings, rows = ticket_job(fake, tmp_path, 8, rows_per_batch=4)
    output = tmp_path / "out.jsonl"
    fake.batch_failed_ids = {"row-2"}
    killed_mid_poll(fake, settings, job, rows, output)

    fake.batch_failed_ids = set()
    fake.batch_polls = 1
    fake.release_batches()
    engine, results = run_batches(settings, job, rows, output=output)

    assert [r.status for r in results] == ["ok"] * 8
    assert len(engine.batches) == 1  # round 2: the failed line alone
    resent = sorted((settings.batch_dir / "requests").glob("*-r2.jsonl"))
    assert [json.loads(line)["custom_id"] for line in resent[0].open()] == ["row-2"]
    assert fake.batch_lines == 9


def test_a_batch_created_but_not_yet_recorded_when_the_run_died_is_found_and_resumed(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    import openai

    job, settings, rows = ticket_job(fake, tmp_path, 6, rows_per_batch=10)
    output = tmp_path / "out.jsonl"
    client = openai.OpenAI(base_url=fake.base_url, api_key=KEY)
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"row-{r.number}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": job.model,
                    "messages": job.messages(r.text),
                    "response_format": job.response_format(use_json_schema=True),
                },
            }
        )
        + "\n"
        for r in rows
    )
    uploaded = client.files.create(file=("killed.jsonl", lines.encode()), purpose="batch")
    ledger = BatchLedger(BatchLedger.path_for(settings.batch_dir, output))
    ledger.creating(  # what the killed run wrote just before creating its batch ...
        SubmittedBatch(
            "", uploaded.id, job.key, 1, {f"row-{r.number}": r.key for r in rows}, at=time.time()
        )
    )
    never = client.files.create(file=("died-before.jsonl", lines.encode()), purpose="batch")
    ledger.creating(SubmittedBatch("", never.id, job.key, 1, {}, at=time.time()))  # no batch
    ledger.close()
    orphan = client.batches.create(  # ... which it created, then died before recording its id
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    client.close()

    engine, results = run_batches(settings, job, rows, output=output)

    assert [r.status for r in results] == ["ok"] * 6
    assert engine.batches == [] and engine.resumed == [orphan.id]
    assert created(fake) == [orphan.id] and fake.batch_lines == 6
    ledger = BatchLedger(BatchLedger.path_for(settings.batch_dir, output))
    assert ledger.unconfirmed() == []  # the one never created is marked abandoned
    ledger.close()


def test_a_changed_job_cancels_the_old_live_batches_and_says_so(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake, tmp_path / "data", rows_per_batch=4)
    path = tickets(tmp_path / "t.csv", 10)
    output = tmp_path / "out.jsonl"
    old = killed_mid_poll(fake, settings, classify_job(), usable_rows(path, classify_job()), output)

    fake.batch_polls = 1
    changed = classify_job(system="Answer tersely.")
    engine, results = run_batches(settings, changed, usable_rows(path, changed), output=output)

    assert [r.status for r in results] == ["ok"] * 10
    cancels = [batch_id for _, event, batch_id in fake.batch_events if event == "cancel"]
    assert cancels == old and engine.cancelled == old
    assert any("job changed" in notice and "cancelled 3" in notice for notice in engine.notices)
    assert fake.batch_lines == 10  # the old batches never ran

    again, _ = run_batches(settings, changed, usable_rows(path, changed), output=output)
    assert again.cancelled == []  # the ledger knows they ended: not asked twice


# ------------------------------------------------------------------------- kill -9, the CLI


def gristmill_batch(
    src: Path, out: Path, data_dir: Path, server: FakeOpenAI, log: Path
) -> subprocess.Popen[bytes]:
    """`gristmill batch --mode batch-api` as a user runs it, in a session of its own (its
    temporary Prefect server too), so a kill reaches every process it started."""
    env = user_env(
        data_dir,
        GRISTMILL_BATCH_ROWS_PER_TASK="10",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY=KEY,
    )
    command = [sys.executable, "-m", "pipelines.cli", "batch", str(src), "--output", str(out)]
    command += ["--template", TEMPLATE, "--schema", "category,priority:int", "--id-column", "id"]
    command += ["--mode", "batch-api", "--poll-interval", "0.2", "--json"]
    with log.open("ab") as handle:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=handle, start_new_session=True
        )


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def session_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """kill -9 the command's session (it and its Prefect server) unless it has ended."""
    if not session_gone(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def submitted_batches(data_dir: Path) -> list[str]:
    ids = []
    for path in (data_dir / "batch" / "journal").glob("batches-*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["event"] == "submitted":
                ids.append(entry["batch_id"])
    return ids


@pytest.mark.slow
def test_kill_9_mid_poll_then_the_same_command_runs_each_line_once(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    rows = 50
    src, out, data_dir = tickets(tmp_path / "t.csv", rows), tmp_path / "out.jsonl", tmp_path / "d"
    log = tmp_path / "runs.log"
    fake.batch_polls = NEVER
    first = gristmill_batch(src, out, data_dir, fake, log)
    try:
        wait_for(
            lambda: (
                len(submitted_batches(data_dir)) == 5
                and all(fake.batch_status(b) == "in_progress" for b in submitted_batches(data_dir))
            ),
            180,
            f"five batches submitted and in progress ({log.read_text()[-2000:]})",
        )
    finally:
        kill_session(first)
    wait_for(lambda: session_gone(first.pid), 30, "the killed run's processes to go")
    assert first.returncode == -signal.SIGKILL
    assert not out.exists()
    assert fake.batch_lines == 0

    fake.release_batches()
    second = gristmill_batch(src, out, data_dir, fake, log)
    try:
        assert second.wait(240) == 0, log.read_text()[-3000:]
    finally:
        kill_session(second)

    fake.run_open_batches()  # whatever a client left behind runs on the server anyway
    assert fake.batch_lines == rows  # each line run once, not 2 x rows
    assert len(created(fake)) == 5  # no batch submitted again
    ids = [int(json.loads(line)["id"]) for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(rows))  # every row exactly once: 0 lost, 0 duplicated
    statuses = {json.loads(line)["status"] for line in out.read_text().splitlines()}
    assert statuses == {"ok"}
