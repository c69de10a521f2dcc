"""GRISTMILL_TASK_RUNNER=dask on a real cluster: a `dask scheduler` and two `dask worker`
processes on loopback ports, a Prefect server (`gristmill server`, started by the first command)
and the project's OpenAI-compatible test server. Summaries and batches come out as on the thread
runner, their tasks ran on both workers, and a worker killed with SIGKILL mid-run costs no
finished LLM call again."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipelines.server import STATE_FILE, stop
from tests.conftest import REPO, SAMPLE_TRANSCRIPTS
from tests.support.openai_server import FakeOpenAI, last_user_text
from tests.support.responders import meeting_notes_responder
from tests.support.tables import write_csv

# whole commands on a real cluster: ~40-220 s a test when make test runs files side by side
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "GRISTMILL_", "OPENAI_", "DASK_"))
    }
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


@dataclass
class Cluster:
    address: str
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def worker_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tasks_run_by(self, name: str) -> list[str]:
        """Task runs that finished on a worker, from its own log."""
        return [
            line.split("Task run '", 1)[1].split("'", 1)[0]
            for line in self.worker_log(name).splitlines()
            if "Task run '" in line and "Finished in state" in line
        ]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _workers_up(address: str, count: int) -> bool:
    from distributed import Client

    try:
        with Client(address, timeout=5, set_as_default=False) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"]) >= count
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and two single-process workers (no nanny: a killed worker stays dead)."""
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [
        _start(
            ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            logs / "scheduler.log",
        )
    ]
    found = Cluster(address, logs)
    try:
        for name in ("w1", "w2"):
            worker = _start(
                [
                    "worker",
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "2",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                logs / f"{name}.log",
            )
            processes.append(worker)
            found.workers[name] = worker
        wait_until(lambda: _workers_up(address, 2), "two Dask workers", timeout=90)
        yield found
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(autouse=True)
def no_server_left(tmp_path: Path) -> Iterator[None]:
    """The commands here share a kept Prefect server (GRISTMILL_SERVER=auto, as a user's do);
    stopped after each test. Left to their idle timeout, five of them ran on through the rest
    of a CI run, ~4 % of a core and 275 MB each."""
    yield
    for state in tmp_path.rglob(STATE_FILE):
        stop(state.parent)


@pytest.fixture
def data(data_dir: Path) -> Path:
    """The commands' data dir (GRISTMILL_DATA_DIR), made empty: conftest's `data_dir`."""
    return data_dir


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-test") as server:
        yield server


def gristmill(
    *args: str, data_dir: Path, env: dict[str, str], timeout: float = 480
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=data_dir.parent,
        env=clean_env(**{"GRISTMILL_DATA_DIR": str(data_dir), "GRISTMILL_SERVER": "auto", **env}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_TASK_RUNS = """
import asyncio, json, sys, uuid
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter
from prefect.client.schemas.sorting import FlowRunSort

async def main():
    async with get_client() as client:
        if sys.argv[1] == "latest":
            latest = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
            run = latest[0].id
        else:
            run = uuid.UUID(sys.argv[1])
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run]}))
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [run]}))
    counts = {}
    for log in logs:
        counts[str(log.task_run_id)] = counts.get(str(log.task_run_id), 0) + 1
    print(json.dumps([[r.name, r.state_name, counts.get(str(r.id), 0)] for r in runs]))

asyncio.run(main())
"""


def task_runs(data_dir: Path, flow_run_id: str) -> list[tuple[str, str, int]]:
    """(name, state, log lines) of every task run of a flow run (`latest`: the last started),
    from the Prefect server that the commands on `data_dir` started."""
    from pipelines.server import find

    server = find(data_dir / "prefect")
    assert server is not None, "no gristmill server is up for this data dir"
    done = subprocess.run(
        [sys.executable, "-c", _TASK_RUNS, flow_run_id],
        env=clean_env(PREFECT_API_URL=server.api_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(r) for r in json.loads(done.stdout)]  # type: ignore[misc]


def dask_env(cluster: Cluster) -> dict[str, str]:
    return {"GRISTMILL_TASK_RUNNER": "dask", "GRISTMILL_DASK_ADDRESS": cluster.address}


def llm_env(server: FakeOpenAI) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}


def summaries(folder: Path) -> dict[str, dict[str, object]]:
    """The JSON summaries in `folder`, without what differs between runs (timings, usage)."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        for volatile in ("usage", "created_at", "generated_at", "duration_s"):
            data.pop(volatile, None)
        found[path.name] = data
    return found


def test_summaries_on_two_dask_workers_equal_the_thread_runner(
    tmp_path: Path, data: Path, cluster: Cluster, llm: FakeOpenAI
) -> None:
    llm.responder = meeting_notes_responder
    env = llm_env(llm)
    threads = gristmill(
        "summarize", str(SAMPLE_TRANSCRIPTS), "--out", str(tmp_path / "threads"), "--json",
        data_dir=data, env=env,
    )  # fmt: skip
    assert threads.returncode == 0, threads.stderr
    calls_on_threads = llm.calls
    on_dask = gristmill(
        "summarize", str(SAMPLE_TRANSCRIPTS), "--out", str(tmp_path / "dask"), "--json",
        data_dir=data, env={**env, **dask_env(cluster)},
    )  # fmt: skip
    assert on_dask.returncode == 0, on_dask.stderr
    report = json.loads(on_dask.stdout)
    assert {t["status"] for t in report["transcripts"]} == {"ok"}
    # the same notes: every chunk's notes came from the result store the thread run wrote,
    # which the workers read (results under <data_dir>/results, passed to them by Prefect)
    assert summaries(tmp_path / "dask") == summaries(tmp_path / "threads")
    assert llm.calls == calls_on_threads  # nothing paid again

    forced = gristmill(
        "summarize", str(SAMPLE_TRANSCRIPTS), "--out", str(tmp_path / "forced"), "--json",
        "--force", data_dir=data, env={**env, **dask_env(cluster)},
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert llm.calls >= 2 * calls_on_threads  # --force: every call made again, on the workers
    assert summaries(tmp_path / "forced").keys() == summaries(tmp_path / "threads").keys()
    ran = {name: cluster.tasks_run_by(name) for name in cluster.workers}
    assert all(any(t.startswith("summarize ") for t in tasks) for tasks in ran.values()), ran
    # the task runs on the workers reported their states and logs to the Prefect server
    # (PrefectHQ/prefect#17750, #18082: task logs missing from the UI with a remote cluster)
    runs = task_runs(data, "latest")
    on_workers = {t for tasks in ran.values() for t in tasks}
    assert {name for name, _, _ in runs} >= on_workers
    assert all(state == "Completed" for _, state, _ in runs), runs
    logged = {name for name, _, lines in runs if lines > 0}
    assert on_workers <= logged, sorted(on_workers - logged)


def write_rows(path: Path, count: int) -> None:
    write_csv(path, ([f"r{i:04d}", f"row {i} on topic {i % 7}"] for i in range(count)))


def read_output(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_batch_on_two_dask_workers_equals_the_thread_runner(
    tmp_path: Path, data: Path, cluster: Cluster, llm: FakeOpenAI
) -> None:
    rows = tmp_path / "rows.csv"
    write_rows(rows, 120)
    env = {**llm_env(llm), "GRISTMILL_BATCH_ROWS_PER_TASK": "10"}
    options = ["--template", "Say one thing about: {{ text }}", "--id-column", "id", "--json"]
    threads = gristmill(
        "batch", str(rows), "--output", str(tmp_path / "threads.csv"), *options,
        data_dir=data, env=env,
    )  # fmt: skip
    assert threads.returncode == 0, threads.stderr
    assert llm.calls == 120
    # another model: another journal key, so every row is paid for again, on Dask
    on_dask = gristmill(
        "batch", str(rows), "--output", str(tmp_path / "dask.csv"), *options,
        "--model", "gpt-4o-mini-2", data_dir=data, env={**env, **dask_env(cluster)},
    )  # fmt: skip
    assert on_dask.returncode == 0, on_dask.stderr
    assert llm.calls == 240
    report = json.loads(on_dask.stdout)
    assert (report["ok"], report["failed"], report["llm_calls"]) == (120, 0, 120)
    expected = [
        {k: v for k, v in r.items() if k != "model"} for r in read_output(tmp_path / "threads.csv")
    ]
    got = [{k: v for k, v in r.items() if k != "model"} for r in read_output(tmp_path / "dask.csv")]
    assert got == expected
    ran = {
        name: [t for t in cluster.tasks_run_by(name) if " rows " in t] for name in cluster.workers
    }
    assert all(ran.values()), ran
    assert sum(len(tasks) for tasks in ran.values()) == 12


def run_killing_worker_w1(
    command: list[str],
    tmp_path: Path,
    env: dict[str, str],
    cluster: Cluster,
    finished: Callable[[], set[str]],
    enough: int,
) -> tuple[set[str], dict[str, Any]]:
    """`command` (with `--json`, data in tmp_path/data, a kept server) run to success while
    worker w1 is killed with SIGKILL once `finished()` holds `enough` items: what was finished
    at the kill, and the command's report."""
    data = tmp_path / "data"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        run = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=clean_env(**{"GRISTMILL_DATA_DIR": str(data), "GRISTMILL_SERVER": "auto", **env}),
            stdout=out,
            stderr=err,
            text=True,
        )
        try:
            wait_until(lambda: len(finished()) >= enough, f"{enough} finished", timeout=240)
            victim = cluster.workers["w1"]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            finished_before_kill = finished()
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, stderr.read_text()[-3000:]
    return finished_before_kill, json.loads(stdout.read_text())


def asked_prompts(llm: FakeOpenAI) -> Counter[str]:
    """How many times each user prompt was sent to the chat endpoint."""
    return Counter(
        last_user_text(r.body)
        for r in llm.requests
        if r.path.endswith("/chat/completions") and isinstance(r.body, dict)
    )


def journal_keys(data: Path) -> set[str]:
    keys = set()
    for path in (data / "batch").rglob("*.jsonl"):
        if path.name.startswith("batches"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                continue
    return keys


def test_a_dask_worker_killed_mid_batch_costs_no_finished_call_again(
    tmp_path: Path, data: Path, cluster: Cluster, llm: FakeOpenAI
) -> None:
    rows = tmp_path / "rows.csv"
    count = 240
    write_rows(rows, count)
    llm.latency = 0.15
    env = {
        **llm_env(llm),
        **dask_env(cluster),
        "GRISTMILL_BATCH_ROWS_PER_TASK": "10",
        "GRISTMILL_BATCH_CONCURRENCY": "4",
    }
    output = tmp_path / "out.csv"
    command = [sys.executable, "-m", "pipelines.cli", "batch", str(rows), "--output", str(output)]
    command += ["--template", "Name a colour for: {{ text }}", "--id-column", "id", "--json"]
    finished_before_kill, report = run_killing_worker_w1(
        command, tmp_path, env, cluster, lambda: journal_keys(data), 40
    )
    assert (report["ok"], report["failed"]) == (count, 0)
    written = read_output(output)
    assert [r["id"] for r in written] == [f"r{i:04d}" for i in range(count)]
    assert {r["status"] for r in written} == {"ok"}

    asked = asked_prompts(llm)
    assert set(asked) == {f"Name a colour for: row {i} on topic {i % 7}" for i in range(count)}
    from tasks.batch.plan import record_job
    from tasks.settings import Settings

    job = record_job(
        Settings(), template="Name a colour for: {{ text }}", id_column="id", text_column="text"
    )
    by_key = {job.row_key(text): text for text in asked}
    paid_twice = {text for text, n in asked.items() if n > 1}
    finished = {by_key[key] for key in finished_before_kill if key in by_key}
    assert finished, "no row was journaled before the kill"
    print(
        f"\nkilled w1 after {len(finished)} rows were journaled; {sum(asked.values())} calls for "
        f"{count} rows, {len(paid_twice)} rows sent twice; tasks finished on w1 "
        f"{len(cluster.tasks_run_by('w1'))}, on w2 {len(cluster.tasks_run_by('w2'))}"
    )
    # a row finished before the kill is never sent again, whichever task re-runs it ...
    assert not (paid_twice & finished)
    # ... and only the calls in flight on the killed worker (2 threads x 4 rows) may repeat
    assert len(paid_twice) <= 8, sorted(paid_twice)
    assert cluster.tasks_run_by("w2"), "the surviving worker ran no task"
    # no task run is left RUNNING by the dead worker (PrefectHQ/prefect#21638), each batch is
    # one task run that ended Completed
    runs = task_runs(data, report["flow_run_id"])
    assert sorted(name for name, _, _ in runs) == sorted(
        f"rows.csv rows {start}-{start + 9}" for start in range(0, count, 10)
    )
    assert {state for _, state, _ in runs} == {"Completed"}, runs


def test_batch_on_a_local_cluster_when_no_address_is_given(tmp_path: Path, data: Path) -> None:
    rows = tmp_path / "rows.csv"
    write_rows(rows, 30)
    options = ["--task", "summarize", "--id-column", "id", "--json"]
    env = {"GRISTMILL_BATCH_ROWS_PER_TASK": "10"}
    threads = gristmill(
        "batch", str(rows), "--output", str(tmp_path / "threads.csv"), *options,
        data_dir=data, env=env,
    )  # fmt: skip
    assert threads.returncode == 0, threads.stderr
    local = gristmill(
        "batch", str(rows), "--output", str(tmp_path / "local.csv"), *options, "--verbose",
        data_dir=data, env={**env, "GRISTMILL_TASK_RUNNER": "dask"},
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in (
        local.stderr + local.stdout
    )
    assert read_output(tmp_path / "local.csv") == read_output(tmp_path / "threads.csv")
    report = json.loads(local.stdout[local.stdout.index("{") :])
    runs = task_runs(data, report["flow_run_id"])
    assert len(runs) == 3 and {state for _, state, _ in runs} == {"Completed"}, runs


def test_engines_and_the_journal_cross_processes_as_their_recipe(tmp_path: Path) -> None:
    from tasks.batch.engines.chat import ChatRowEngine
    from tasks.batch.journal import RowJournal
    from tasks.batch.plan import record_job
    from tasks.batch.reading import Row
    from tasks.batch.results import ok_result
    from tasks.errors import OutputValidationError
    from tasks.llm import Usage
    from tasks.settings import Settings
    from tasks.summaries import build_summarizer

    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", openai_api_key="sk-secret")
    job = record_job(settings, template="Hi {{ text }}", text_column="text")
    engine = ChatRowEngine.from_settings(settings, job)
    summarizer = build_summarizer(settings)
    journal = RowJournal(tmp_path / "journal.jsonl")
    # in the process that built them: the same objects back (as a Dask worker rebuilds each
    # once per process, every task of a run there shares its limiter and connections)
    assert pickle.loads(pickle.dumps(engine)) is engine
    assert pickle.loads(pickle.dumps(journal)) is journal
    # another process: rebuilt from the recipe, and a row journaled here is found there
    row = Row(number=0, row_id="a", values={"text": "x"}, text="Hi x", key=job.row_key("Hi x"))
    journal.add(row, ok_result(row, "done", Usage(), "gpt-4o-mini"))
    probe = (
        "import pickle, sys\n"
        "engine, summarizer, journal, row = pickle.loads(sys.stdin.buffer.read())\n"
        "print(type(engine).__name__, engine.limiter.concurrency, summarizer.model,"
        " journal.get(row).result)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input=pickle.dumps((engine, summarizer, journal, row)),
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["ChatRowEngine", "16", "gpt-4o-mini", "done"]

    error = OutputValidationError("bad", errors=["x"], last_output="{", attempts=3)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.errors, again.attempts) == (
        OutputValidationError, "bad", ["x"], 3
    )  # fmt: skip
    journal.close()


def test_a_dask_address_nobody_answers_is_one_line_and_exit_2(tmp_path: Path, data: Path) -> None:
    done = gristmill(
        "summarize", str(SAMPLE_TRANSCRIPTS), "--out", str(tmp_path / "out"),
        data_dir=data,
        env={
            "GRISTMILL_TASK_RUNNER": "dask",
            "GRISTMILL_DASK_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
            "GRISTMILL_SERVER": "ephemeral",
            "PREFECT_API_URL": "http://127.0.0.1:9/api",
        },
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("gristmill: error:")]
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], done.stderr

    unknown = gristmill(
        "summarize", data_dir=data, env={"GRISTMILL_TASK_RUNNER": "ray"}, timeout=120
    )
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr
    assert "GRISTMILL_TASK_RUNNER" in unknown.stderr, unknown.stderr


def chunk_prompts(settings_overrides: dict[str, object]) -> dict[str, str]:
    """Result-store key -> first-attempt prompt of every chunk of the sample transcripts."""
    from tasks.chunking import chunk_utterances
    from tasks.settings import Settings
    from tasks.summaries import build_summarizer
    from tasks.summaries.cache import chunk_cache_key
    from tasks.summaries.prompts import CHUNK_PROMPT
    from tasks.transcripts import parse_transcript

    settings = Settings(**settings_overrides)  # type: ignore[arg-type]
    summarizer = build_summarizer(settings)
    prompts = {}
    for path in sorted(SAMPLE_TRANSCRIPTS.iterdir()):
        transcript = parse_transcript(path, source=str(path))
        chunks = chunk_utterances(
            transcript.utterances, settings.chunk_tokens, settings.chunk_overlap_tokens
        )
        for chunk in chunks:
            key = chunk_cache_key(summarizer, transcript.name, len(chunks), chunk)
            prompts[key] = CHUNK_PROMPT.format(
                title=transcript.name, part=chunk.index + 1, parts=len(chunks), text=chunk.text
            )
    return prompts


def test_a_dask_worker_killed_mid_summary_costs_no_finished_chunk_again(
    tmp_path: Path, data: Path, cluster: Cluster, llm: FakeOpenAI
) -> None:
    results = data / "results"
    llm.responder = meeting_notes_responder
    llm.latency = 0.3
    env = {
        **llm_env(llm),
        **dask_env(cluster),
        "GRISTMILL_CHUNK_TOKENS": "1000",
        "GRISTMILL_CHUNK_OVERLAP_TOKENS": "30",
        "GRISTMILL_LLM_CONCURRENCY": "2",
    }
    prompts = chunk_prompts(
        {
            "openai_base_url": llm.base_url,
            "openai_api_key": "sk-test",
            "chunk_tokens": 1000,
            "chunk_overlap_tokens": 30,
        }
    )
    assert len(prompts) >= 30

    def stored() -> set[str]:
        return {p.name for p in results.glob("summarize-chunk-*")} if results.is_dir() else set()

    command = [sys.executable, "-m", "pipelines.cli", "summarize", str(SAMPLE_TRANSCRIPTS)]
    command += ["--out", str(tmp_path / "out"), "--json"]
    finished_before_kill, report = run_killing_worker_w1(command, tmp_path, env, cluster, stored, 8)
    assert len(report["transcripts"]) == 6
    assert {t["status"] for t in report["transcripts"]} == {"ok"}, report["transcripts"]

    asked = asked_prompts(llm)
    assert set(prompts.values()) <= set(asked)
    finished = {prompts[key] for key in finished_before_kill if key in prompts}
    assert len(finished) >= 8
    paid_twice = {prompt for prompt in prompts.values() if asked[prompt] > 1}
    print(
        f"\nkilled w1 after {len(finished)} of {len(prompts)} chunks were stored; "
        f"{len(paid_twice)} chunk prompts sent twice"
    )
    # a chunk whose notes were stored before the kill is never sent again ...
    assert not (paid_twice & finished)
    # ... and only the calls in flight on the killed worker (2 threads x 2 calls) may repeat
    assert len(paid_twice) <= 4


def collection_rows(server: Any, name: str) -> dict[str, tuple[str, str]]:
    """Chunk id -> (text, content hash) of a collection on the Chroma server."""
    import chromadb

    client = chromadb.HttpClient(host=server.host, port=server.port)
    got = client.get_collection(name).get(include=["documents", "metadatas"])
    return {
        i: (text, str(meta.get("content_hash")))
        for i, text, meta in zip(
            got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True
        )
    }


def test_ingest_on_two_dask_workers_equals_the_thread_runner(
    tmp_path: Path, data: Path, cluster: Cluster
) -> None:
    from tests.support.chroma_process import chroma_server
    from tests.support.docs_tree import INDEXED, QUARANTINED, build_tree

    tree = build_tree(tmp_path / "docs", files=70, seed=5)  # 3 document batches (32 a batch)
    with chroma_server(tmp_path / "chroma") as server:
        chroma = {"GRISTMILL_CHROMA_HOST": server.host, "GRISTMILL_CHROMA_PORT": str(server.port)}
        threads = gristmill(
            "ingest", str(tree.root), "--collection", "threads", "--json",
            data_dir=data, env=chroma,
        )  # fmt: skip
        # exit 1: the tree holds a binary page, quarantined (on both runners alike)
        assert threads.returncode == 1 and tree.count(QUARANTINED) == 1, threads.stderr
        on_dask = gristmill(
            "ingest", str(tree.root), "--collection", "dask", "--json",
            data_dir=data, env={**chroma, **dask_env(cluster)},
        )  # fmt: skip
        assert on_dask.returncode == threads.returncode, on_dask.stderr
        again = gristmill(
            "ingest", str(tree.root), "--collection", "dask", "--json",
            data_dir=data, env={**chroma, **dask_env(cluster)},
        )  # fmt: skip
        assert again.returncode == threads.returncode, again.stderr
        expected, got = json.loads(threads.stdout), json.loads(on_dask.stdout)
        assert collection_rows(server, "dask") == collection_rows(server, "threads")
    assert got["added"] == expected["added"] == tree.count(INDEXED)
    for key in ("skipped", "quarantined", "chunks_written", "collection_count"):
        assert got[key] == expected[key], key
    assert got["embeddings_computed"] == got["chunks_written"] > 0
    rerun = json.loads(again.stdout)
    assert (rerun["added"], rerun["unchanged"], rerun["embeddings_computed"]) == (
        0,
        got["added"],
        0,
    )
    # every document batch was a task run on a worker, and both workers took some
    ran = {
        name: [t for t in cluster.tasks_run_by(name) if t.startswith("ingest ")]
        for name in cluster.workers
    }
    assert all(ran.values()), ran
    assert sum(len(tasks) for tasks in ran.values()) == 2 * 3  # first run and re-run
    runs = task_runs(data, "latest")  # the re-run's: its batches found everything unchanged
    batches = [r for r in runs if r[0].startswith("ingest ")]
    assert len(batches) == 3 and {state for _, state, _ in batches} == {"Completed"}, runs


def test_ingest_on_dask_with_an_on_disk_chroma_is_one_line_and_exit_2(
    tmp_path: Path, data: Path
) -> None:
    done = gristmill(
        "ingest", str(REPO / "data" / "documents"), data_dir=data,
        env={"GRISTMILL_TASK_RUNNER": "dask", "GRISTMILL_SERVER": "ephemeral"}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("gristmill: error:")]
    assert len(lines) == 1 and "Chroma server" in lines[0], done.stderr
