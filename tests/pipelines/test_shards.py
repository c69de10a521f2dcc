"""`--shards N`: a job cut into shards makes the same outputs as the whole job, every item once,
nothing paid twice; the shards are the same on every run; what must happen once happens once."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.run_context import run_context
from pipelines.shards import (
    ShardProgress,
    ShardResult,
    lost_items,
    paths_run_name,
    row_range,
    shard_of,
)
from tasks.reporting import Progress
from tasks.settings import Settings
from tests.conftest import SAMPLE_TRANSCRIPTS
from tests.support.embedders import HashEmbedder
from tests.support.openai_fixtures import fake_openai_fixtures, fake_openai_settings
from tests.support.openai_server import FakeOpenAI

KEY = "sk-test-shards-secret-0123456789"
CLASSIFY: dict[str, Any] = {
    "template": "Classify this ticket: {{ text }}",
    "schema": "category,priority:int",
    "id_column": "id",
}


server, fake = fake_openai_fixtures(KEY)


def llm_settings(fake: FakeOpenAI, data_dir: Path, **overrides: Any) -> Settings:
    values = {"llm_max_retries": 0, "batch_rows_per_task": 4} | overrides
    return fake_openai_settings(fake, KEY, data_dir, **values)


def test_a_key_lands_in_the_same_shard_every_time_and_keys_spread_evenly() -> None:
    keys = [f"meetings/2026-{i:04d}.txt" for i in range(2000)]
    first = [shard_of(k, 4) for k in keys]
    assert first == [shard_of(k, 4) for k in keys]
    assert shard_of("meetings/2026-0000.txt", 4) == first[0]
    counts = Counter(first)
    assert set(counts) == {0, 1, 2, 3}
    assert all(400 < c < 600 for c in counts.values()), counts


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_over_paths_is_named_for_them_and_its_shard() -> None:
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(flow_run_name=paths_run_name("ingest", "data/documents"))
    def named(paths: list[str] | None = None, shards: int = 1, shard: int | None = None) -> str:
        return str(flow_run.name)

    assert named() == "ingest documents"
    assert named(paths=["notes/a.md"]) == "ingest a.md"
    assert named(paths=["a", "b", "c"], shards=4, shard=1) == "ingest 3 paths [shard 2/4]"


def test_the_items_of_a_shard_that_left_no_report_are_named_with_why() -> None:
    keys = [f"notes/{i}.md" for i in range(40)]
    results = [
        ShardResult(0, report="done"),
        ShardResult(1, error="crashed twice"),
        ShardResult(2),
    ]
    lost = lost_items(results, keys, 3)
    assert set(lost) == {k for k in keys if shard_of(k, 3) in (1, 2)} and lost
    assert {lost[k] for k in lost if shard_of(k, 3) == 1} == {
        "shard 2/3 did not finish: crashed twice"
    }
    assert {lost[k] for k in lost if shard_of(k, 3) == 2} == {"shard 3/3 did not finish: no report"}
    assert lost_items([ShardResult(0, report="a"), ShardResult(1, report="b")], keys, 2) == {}


def test_shards_run_in_turn_are_one_count_of_the_whole_job() -> None:
    heard: list[Progress] = []
    progress = ShardProgress(heard.append, total=5)
    progress(Progress(0, 3))
    progress(Progress(1, 3, 10, 30, 1.5))
    progress(Progress(3, 3, 30, 30))
    progress.next_shard()
    progress(Progress(0, 2))
    progress(Progress(1, 2, 5, 12, 1.25))
    assert heard[1] == Progress(1, 5, 10, 30, 1.5)
    assert heard[-1] == Progress(4, 5, 35, 42, 4.25)
    assert [p.completed for p in heard] == [0, 1.5, 3, 3, 4.25]


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_row_ranges_cover_every_row_once_in_order(shards: int) -> None:
    for total in range(0, 40):
        numbers = [n for shard in range(shards) for n in row_range(total, shard, shards)]
        assert numbers == list(range(total))


def tickets(path: Path, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for i in range(count):
            writer.writerow([str(i), f"ticket {i}: the printer on floor {i} is jammed"])
        writer.writerow(["3", "a repeated id"])  # invalid_input, in its place
        writer.writerow(["99", ""])  # nothing to send: invalid_input
    return path


def run_batch(src: Path, out: Path, settings: Settings, **parameters: Any) -> tuple[Any, Any]:
    from pipelines.batch import batch_records
    from tasks.reporting import state_report

    with run_context(settings=settings):
        state = batch_records(
            input_path=str(src), output_path=str(out), **CLASSIFY, **parameters, return_state=True
        )
    return state, state_report(state)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.open(encoding="utf-8")]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_sharded_batch_writes_the_whole_jobs_output_and_pays_each_row_once(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path, suffix: str
) -> None:
    src = tickets(tmp_path / "tickets.csv", 21)
    whole, sharded = tmp_path / f"whole{suffix}", tmp_path / f"sharded{suffix}"
    state, report = run_batch(src, whole, llm_settings(fake, tmp_path / "a"))
    assert (report.rows, report.ok, report.invalid_input) == (23, 21, 2)
    assert fake.calls == 21

    fake.reset()
    settings = llm_settings(fake, tmp_path / "b")
    state, report = run_batch(src, sharded, settings, shards=3)
    assert fake.calls == 21  # each valid row once, across the shards
    assert (report.rows, report.ok, report.invalid_input, report.reused) == (23, 21, 2, 0)
    assert state.is_failed()  # the invalid rows fail the job, as without shards
    assert read_rows(sharded) == read_rows(whole)  # the same rows, in input order
    dead = [json.loads(line) for line in sharded.with_name("sharded.dead-letter.jsonl").open()]
    assert [d["row_number"] for d in dead] == [21, 22]
    assert not any(p.name.endswith(".shards") for p in tmp_path.iterdir())  # parts joined
    journals = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "b/batch/journal").iterdir())
    assert journals == ["1-of-3.jsonl", "2-of-3.jsonl", "3-of-3.jsonl"]

    fake.reset()  # the same shards again: every finished row from the shards' journals
    state, report = run_batch(src, sharded, settings, shards=3)
    assert fake.calls == 0 and report.reused == 21
    assert read_rows(sharded) == read_rows(whole)


def test_a_shard_that_fails_leaves_no_output_and_the_rerun_pays_only_for_the_rest(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    from tasks.batch.parts import part_path

    src = tickets(tmp_path / "tickets.csv", 12)
    out = tmp_path / "out.csv"
    settings = llm_settings(fake, tmp_path / "data")
    # the second shard cannot move its part into place: its run fails before its report
    blocker = part_path(out, 1, 3)
    blocker.mkdir(parents=True)  # a folder where its part file must go
    state, report = run_batch(src, out, settings, shards=3)
    assert state.is_failed()
    assert "shard 2/3 left no report" in state.message and "run it again" in state.message
    assert not out.exists()
    paid = fake.calls
    assert 0 < paid <= 12

    blocker.rmdir()
    fake.reset()
    state, report = run_batch(src, out, settings, shards=3)
    assert report.rows == 14 and report.ok == 12
    assert fake.calls == 12 - report.reused and report.reused == paid  # none paid twice


def test_two_runs_of_one_shard_at_once_pay_for_its_rows_once(
    prefect_harness: None, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """What happens when the server marks a live shard run Crashed (its heartbeats late) and
    the parent submits the shard again: two runs of one shard at once. The later one waits
    for the earlier (pipelines/shards.py one_run_per_shard), then takes every row from the
    journal; without the claim both pay for every row neither had finished."""
    import threading

    src = tickets(tmp_path / "tickets.csv", 12)
    settings = llm_settings(fake, tmp_path / "data", batch_concurrency=2)
    fake.latency = 0.3
    start = threading.Barrier(2)
    reports: dict[str, Any] = {}

    def run(name: str) -> None:
        start.wait()
        reports[name] = run_batch(src, tmp_path / "out.csv", settings, shards=2, shard=1)[1]

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert row_range(14, 1, 2) == range(7, 14)  # tickets 7-11, the repeated id, the empty one
    assert sorted((r.rows, r.ok) for r in reports.values()) == [(7, 5), (7, 5)]
    assert fake.calls == 5  # each of its tickets once
    assert sorted(r.reused for r in reports.values()) == [0, 5]


def test_a_sharded_summarize_writes_what_the_whole_job_writes(
    prefect_harness: None, tmp_path: Path
) -> None:
    from pipelines.summarize import summarize_transcripts
    from tasks.reporting import state_report

    transcripts = tmp_path / "transcripts"
    shutil.copytree(SAMPLE_TRANSCRIPTS, transcripts)
    (transcripts / "empty.txt").write_text("")  # fails, in its shard, with its reason
    settings = Settings(data_dir=tmp_path / "data", engine="offline")
    reports = {}
    for name, shards in (("whole", 1), ("sharded", 3)):
        with run_context(settings=settings):
            state = summarize_transcripts(
                paths=[str(transcripts)], out_dir=str(tmp_path / name), shards=shards,
                return_state=True,
            )  # fmt: skip
        reports[name] = state_report(state)
        assert state.is_failed() and "empty.txt" in state.message
    whole, sharded = reports["whole"], reports["sharded"]
    assert [(t.source, t.status) for t in sharded.transcripts] == [
        (t.source, t.status) for t in whole.transcripts
    ]
    assert len(sharded.transcripts) == 7 and len(sharded.failed) == 1
    for path in sorted((tmp_path / "whole").glob("*.json")):
        ours = json.loads((tmp_path / "sharded" / path.name).read_text())
        theirs = json.loads(path.read_text())
        assert ours["summary"] == theirs["summary"] and ours["key_points"] == theirs["key_points"]

    with run_context(settings=settings):
        state = summarize_transcripts(
            paths=[str(transcripts)], out_dir=str(tmp_path / "sharded"), shards=3,
            return_state=True,
        )  # fmt: skip
    again = state_report(state)
    assert Counter(t.status for t in again.transcripts) == {"cached": 6, "failed": 1}


def test_a_sharded_ingest_matches_the_whole_one_and_cleans_up_once(
    prefect_harness: None, tmp_path: Path
) -> None:
    from pipelines.ingest import ingest_documents
    from tasks.chroma_client import open_chroma
    from tasks.reporting import state_report

    docs = tmp_path / "docs"
    for i in range(9):
        (docs / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        (docs / f"part{i % 3}" / f"doc{i}.md").write_text(
            f"# Document {i}\n\n" + f"Paragraph {i} about topic {i * 7}. " * 40
        )
    settings = Settings(data_dir=tmp_path / "data", doc_chunk_tokens=80)
    embedder = HashEmbedder()

    def ingest(collection: str, shards: int, cleanup: str = "incremental") -> Any:
        with run_context(settings=settings, embedder=embedder):
            state = ingest_documents(
                paths=[str(docs)], collection=collection, cleanup=cleanup, shards=shards,
                return_state=True,
            )  # fmt: skip
        assert state.is_completed(), state.message
        return state_report(state)

    def ids(collection: str) -> set[str]:
        return set(open_chroma(settings).get_collection(collection).get(include=[])["ids"])

    whole, sharded = ingest("whole", 1), ingest("sharded", 3)
    assert (
        (sharded.added, sharded.chunks_written)
        == (whole.added, whole.chunks_written)
        == (
            9,
            whole.chunks_written,
        )
    )
    assert ids("sharded") == ids("whole") and sharded.collection_count == len(ids("whole"))

    (docs / "part1" / "doc4.md").unlink()
    after = ingest("sharded", 3, cleanup="full")
    assert (after.unchanged, after.deleted) == (8, 1)
    assert after.cleanup == "full"
    ingest("whole", 1, cleanup="full")
    assert ids("sharded") == ids("whole")


def test_shards_on_a_work_pool_need_a_chroma_server_and_the_shard_deployment(
    prefect_harness: None, tmp_path: Path
) -> None:
    from pipelines.ingest import ingest_documents
    from pipelines.summarize import summarize_transcripts

    settings = Settings(data_dir=tmp_path / "data", work_pool="gpu-boxes", engine="offline")
    with run_context(settings=settings, embedder=HashEmbedder()):
        state = ingest_documents(paths=[str(tmp_path)], shards=2, return_state=True)
    assert state.is_failed() and "GRISTMILL_CHROMA_HOST" in state.message

    (tmp_path / "t.txt").write_text("Ann: hello there.\nBob: hi, Ann.\n")
    with (
        run_context(settings=settings),
        pytest.raises(Exception, match=r"no deployment summarize-transcripts/shard"),
    ):
        summarize_transcripts(paths=[str(tmp_path / "t.txt")], shards=2)


def test_the_cli_refuses_shards_that_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import app

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src = tickets(tmp_path / "tickets.csv", 2)
    runner = CliRunner()
    result = runner.invoke(app, ["summarize", "--shards", "0"])
    assert result.exit_code == 2 and "--shards" in result.output
    result = runner.invoke(
        app,
        [
            "batch", str(src), "-o", str(tmp_path / "o.csv"), "--template", "{{ text }}",
            "--mode", "batch-api", "--shards", "2", "--id-column", "id",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "gristmill: error: --shards needs --mode online" in result.output
    assert "Processing" not in result.output and KEY not in result.output
