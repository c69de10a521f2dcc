"""One writer for a Prefect server: a flow run with N trivial task runs, reported to the API in
PREFECT_API_URL. Run as `python -m tests.support.many_task_runs N`; prints one JSON line with
the flow run's id, final state and seconds. Used by tests/e2e/test_postgres_server.py and
benchmarks/prefect_database.py to put several writers on a server at once."""

from __future__ import annotations

import json
import sys
import time

from prefect import flow, task


@task
def square(number: int) -> int:
    """A task run that costs the server its writes and nothing else."""
    return number * number


@flow(name="many-task-runs")
def many_task_runs(count: int) -> int:
    """`count` task runs at once on the default thread pool."""
    return sum(future.result() for future in square.map(range(count)))


def main() -> None:
    count = int(sys.argv[1])
    started = time.monotonic()
    state = many_task_runs(count, return_state=True)
    print(
        json.dumps(
            {
                "flow_run_id": str(state.state_details.flow_run_id),
                "state": state.type.value,
                "seconds": round(time.monotonic() - started, 3),
            }
        ),
        flush=True,
    )
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
