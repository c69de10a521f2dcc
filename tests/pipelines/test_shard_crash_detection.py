"""The automation that marks silent shard runs Crashed, on a real Prefect server: a worker killed
while it was starting a run leaves the run Submitting, with no heartbeat ever; the parent waited
for it without end (seen in tests/e2e/test_shards_pool.py) until a start counted as a sign of
life."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.prefect_server import PrefectServer, prefect_server_process, tail, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SILENCE_S = 10  # the least the setting allows

# In a process of its own, against the server: the automation, then one shard-tagged run and
# one other run, each left where a killed worker leaves it (Submitting) and never heard again.
LEAVE_RUNS_SUBMITTING = """
import json, sys
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Pending
from pipelines.shards import SHARD_TAG, ensure_crash_detection

@flow(name="shard-like")
def shard_like() -> None: ...

ensure_crash_detection(float(sys.argv[1]))
ids = {}
with get_client(sync_client=True) as client:
    for name, tags in (("shard", [SHARD_TAG]), ("other", [])):
        run = client.create_flow_run(shard_like, tags=tags, state=Pending())
        client.set_flow_run_state(run.id, Pending(name="Submitting"), force=True)
        ids[name] = str(run.id)
print(json.dumps(ids))
"""


@pytest.fixture
def server(tmp_path: Path) -> PrefectServer:
    with prefect_server_process(tmp_path) as running:
        yield running  # type: ignore[misc]


def test_a_shard_run_left_submitting_by_a_killed_worker_is_marked_crashed(
    server: PrefectServer,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LEAVE_RUNS_SUBMITTING, str(SILENCE_S)],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])

    def crashed() -> dict[str, str] | None:
        state = server.get(f"/flow_runs/{ids['shard']}")["state"]
        return state if state["type"] == "CRASHED" else None

    state = wait_for(
        "the silent shard run to be marked Crashed",
        crashed,
        SILENCE_S + 90,
        lambda: tail(server.logs / "server.log"),
    )
    assert f"no heartbeat for {SILENCE_S} s" in state["message"]
    other = server.get(f"/flow_runs/{ids['other']}")["state"]
    assert (other["type"], other["name"]) == ("PENDING", "Submitting")  # only shard runs
