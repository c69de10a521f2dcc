"""A job cut into shards: the same flow run once per shard, here or on a work pool's workers.

A flow called with `shards=N` (N > 1) and no `shard` is the *parent*: it starts the flow once
per shard with `shard=i, shards=N`, waits, merges the shards' reports into its own, and does
what must happen once after all of them (ingestion's full cleanup, batch's output file). A run
with `shard=i` takes only its part of the job, chosen deterministically (`in_shard` hashes a
stable key such as the file's path under its input folder; batch cuts row ranges), so a re-run
makes the same shards and a finished shard costs only its cache look-ups.

Where the shards run:
- no work pool (`GRISTMILL_WORK_POOL` unset): one after another in this process, each a child
  flow run of the parent (the UI shows the parent with its shards);
- `GRISTMILL_WORK_POOL=NAME`: each a run of the pipeline's `shard` deployment on that pool
  (`run_deployment`, all submitted at once, also children of the parent), so any worker on any
  machine takes one. A shard whose run crashes (its worker killed, its machine lost) is
  submitted again, up to `shard_attempts` runs. Its report comes back through a JSON file under
  `<data_dir>/shards/`, which is why every worker must see the same data dir.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import BaseModel

from pipelines.run_context import run_context
from tasks.errors import ConfigurationError, UsageError
from tasks.reporting import Progress, ProgressCallback, state_report, write_json_atomically

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.states import State

    from tasks.settings import Settings

SHARD_DEPLOYMENT = "shard"
SHARD_TAG = "gristmill-shard"
CRASH_AUTOMATION = "gristmill: silent shard runs crashed"
POLL_SECONDS = 2.0
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
ReportT = TypeVar("ReportT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")
CLAIM_LOG_EVERY_S = 60.0


def check_shards(shards: int, shard: int | None) -> None:
    """Refuse shard numbers that cannot work, in words."""
    if not isinstance(shards, int) or shards < 1:
        raise UsageError(f"shards must be a whole number of at least 1, not {shards!r}")
    if shard is not None and not 0 <= shard < shards:
        raise UsageError(f"shard must be between 0 and {shards - 1}, not {shard!r}")


def is_parent(shards: int, shard: int | None) -> bool:
    """Whether a run with these parameters starts shards rather than doing work itself."""
    check_shards(shards, shard)
    return shards > 1 and shard is None


def shard_of(key: str, shards: int) -> int:
    """The shard a key belongs to: a hash, so the same key lands in the same shard on every
    run and machine, and keys spread evenly whatever their names."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def in_shard(key: str, shard: int | None, shards: int) -> bool:
    return shard is None or shards <= 1 or shard_of(key, shards) == shard


def row_range(total: int, shard: int, shards: int) -> range:
    """Shard `shard`'s contiguous rows of `total` (0-based): ranges differ by at most one row
    and, in shard order, cover every row once."""
    return range(total * shard // shards, total * (shard + 1) // shards)


def shard_label(shard: int | None, shards: int) -> str:
    return "" if shard is None or shards <= 1 else f" [shard {shard + 1}/{shards}]"


def paths_run_name(verb: str, default_path: str) -> Callable[[], str]:
    """A flow-run namer for a flow over `paths`: "ingest documents", "summarize 3 paths",
    "summarize notes [shard 2/4]", read from the run's parameters when it starts."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters
        paths = params.get("paths") or [default_path]
        what = Path(paths[0]).name if len(paths) == 1 else f"{len(paths)} paths"
        return f"{verb} {what}{shard_label(params.get('shard'), params.get('shards', 1))}"

    return name


def report_path(settings: Settings, flow_run_id: str) -> Path:
    """Where a shard run leaves its report for its parent (on the shared data dir)."""
    return settings.data_dir / "shards" / f"{flow_run_id}.json"


def one_run_per_shard(fn: Callable[P, R]) -> Callable[P, R]:
    """A shard run (a call with `shard` set) holds its shard's claim for as long as it works,
    so two runs of one shard never work at once: the later one waits for the earlier to end,
    then finds its rows, chunks and documents done (journal, caches) and pays for nothing.

    Two runs of one shard happen when the server marks a live run Crashed (its heartbeats late
    on a machine that froze, or cut off from the server for longer than the crash automation's
    silence) and the parent submits the shard again: without the claim both would pay for the
    items neither had finished. A run whose process died (SIGKILL, its machine lost) holds
    nothing: the kernel drops a `flock` with its process (NFSv4 when the lease ends).
    Put between `@flow` and the function; the flow's signature and docstring stay its own."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        shard, shards = bound.arguments.get("shard"), bound.arguments.get("shards", 1)
        if shard is None or not isinstance(shards, int) or shards <= 1:
            return fn(*args, **kwargs)
        from pipelines.run_context import current_run

        data_dir = current_run().run_settings().data_dir
        with shard_claim(data_dir, fn.__name__, bound.arguments):
            return fn(*args, **kwargs)

    return run


@contextmanager
def shard_claim(data_dir: Path, job: str, parameters: Mapping[str, Any]) -> Iterator[None]:
    """Hold the claim of one shard of one job (its flow and parameters, which the parent sends
    unchanged when it submits the shard again): an exclusive `flock` on a file under
    `<data_dir>/shards/claims/`, waited for while another live run holds it."""
    blob = json.dumps([job, dict(parameters)], sort_keys=True, default=str)
    path = data_dir / "shards" / "claims" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited_since = time.monotonic()
        logged = -CLAIM_LOG_EVERY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - waited_since
                if waited - logged >= CLAIM_LOG_EVERY_S:
                    logged = waited
                    holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
                    _claim_logger().info(
                        "an earlier run of this shard is still at work (%s): waiting for it "
                        "to end (%.0f s so far), so nothing it is doing is paid for twice",
                        holder or "holder unknown",
                        waited,
                    )
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder().encode("utf-8"), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder() -> str:
    from prefect.runtime import flow_run

    run = f"flow run {flow_run.id}, " if flow_run.id else ""
    return f"{run}pid {os.getpid()} on {socket.gethostname()}\n"


def _claim_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def leave_report(settings: Settings, report: BaseModel) -> None:
    """Called by a shard run at its end: its report for the parent (a run on a worker cannot
    hand back a Python object; its flow run id names the file)."""
    from prefect.runtime import flow_run

    if flow_run.id:
        write_json_atomically(report_path(settings, str(flow_run.id)), report.model_dump())


@dataclass
class ShardResult:
    """One shard's end: its report, or why there is none."""

    shard: int
    report: Any = None
    error: str | None = None


class ShardProgress:
    """The progress of shards run one after another in this process, as one count for the
    caller's `on_progress(Progress)` (the CLI's bar); `total` is the whole job's items."""

    def __init__(self, on_progress: ProgressCallback, total: int) -> None:
        self.on_progress = on_progress
        self.total = total
        self.base = Progress(0, total)
        self.current = Progress(0, 0)

    def __call__(self, progress: Progress) -> None:
        self.current = progress
        base = self.base
        self.on_progress(
            Progress(
                min(base.done + progress.done, self.total),
                self.total,
                base.parts_done + progress.parts_done,
                base.parts_known + progress.parts_known,
                None if progress.work is None else base.done + progress.work,
            )
        )

    def next_shard(self) -> None:
        base, current = self.base, self.current
        self.base = Progress(
            base.done + current.total,
            self.total,
            base.parts_done + current.parts_done,
            base.parts_known + current.parts_known,
        )
        self.current = Progress(0, 0)


def run_shards(
    flow: Flow[..., Any],
    parameters: dict[str, Any],
    shards: int,
    settings: Settings,
    report_type: type[ReportT],
    progress: ShardProgress | None = None,
) -> list[ShardResult]:
    """Run `flow` once per shard with `parameters` (JSON, as a deployment takes them) and wait.

    Shards run in this process inherit the caller's `run_context` (settings, engine objects),
    with `progress` as their `on_progress`; shards on a work pool build their own from their
    worker's environment.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()  # the running flow, with the caller's options (task runner)
    flow = context.flow if context is not None and context.flow is not None else flow
    if settings.work_pool:
        return _on_pool(flow, parameters, shards, settings, report_type)
    results: list[ShardResult] = []
    for shard in range(shards):
        with run_context(on_progress=progress):
            state = flow(**parameters, shard=shard, shards=shards, return_state=True)
        if progress is not None:
            progress.next_shard()
        assert state is not None  # return_state=True
        report = _local_report(state, settings, report_type)
        if isinstance(report, report_type):
            results.append(ShardResult(shard, report=report))
        else:
            results.append(ShardResult(shard, error=str(state.message or report)))
    return results


def _take_report(path: Path, report_type: type[ReportT]) -> ReportT | None:
    """The report a shard run left at `path` (removed once read), or None when there is none."""
    if not path.is_file():
        return None
    report = report_type.model_validate_json(path.read_text(encoding="utf-8"))
    path.unlink()
    return report


def _local_report(state: State, settings: Settings, report_type: type[ReportT]) -> Any:
    """A shard run in this process: the report it left (as for a parent on another machine),
    else its state's result. The file first: under load a Completed state once came back
    without its data (Prefect's MissingResult; seen in tests/pipelines/test_shards.py)."""
    from prefect.exceptions import MissingResult

    run_id = state.state_details.flow_run_id
    left = _take_report(report_path(settings, str(run_id)), report_type) if run_id else None
    if left is not None:
        return left
    try:
        return state_report(state)
    except MissingResult as exc:
        return exc


def _on_pool(
    flow: Flow[..., Any],
    parameters: dict[str, Any],
    shards: int,
    settings: Settings,
    report_type: type[ReportT],
) -> list[ShardResult]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    name = f"{flow.name}/{SHARD_DEPLOYMENT}"
    _check_deployment(name, settings.work_pool or "")
    ensure_crash_detection(settings.shard_silence_s)

    def submit(shard: int) -> str:
        run: Any = run_deployment(
            name,
            parameters={**parameters, "shard": shard, "shards": shards},
            timeout=0,  # submit only; all shards wait together below
            tags=[SHARD_TAG, f"shard:{shard + 1}/{shards}"],
        )
        return str(run.id)

    running = {shard: submit(shard) for shard in range(shards)}
    attempts = dict.fromkeys(running, 1)
    results: dict[int, ShardResult] = {}
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(POLL_SECONDS)
            for shard, run_id in list(running.items()):
                state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
                kind = state.type.value if state is not None else "PENDING"
                if kind not in FINAL:
                    continue
                del running[shard]
                path = report_path(settings, run_id)
                if (report := _take_report(path, report_type)) is not None:
                    results[shard] = ShardResult(shard, report)
                elif kind == "CRASHED" and attempts[shard] < settings.shard_attempts:
                    attempts[shard] += 1  # its worker died: run the shard again, elsewhere
                    running[shard] = submit(shard)
                elif kind in ("COMPLETED", "FAILED") and state is not None and state.message:
                    results[shard] = ShardResult(
                        shard,
                        error=f"its run ended {kind.lower()} ({state.message}) but left no report "
                        f"at {path}: every worker needs this command's GRISTMILL_DATA_DIR "
                        f"({settings.data_dir.resolve()}, a shared filesystem)",
                    )
                else:
                    message = (state.message if state is not None else None) or kind.lower()
                    results[shard] = ShardResult(shard, error=message)
    return [results[shard] for shard in range(shards)]


def _check_deployment(name: str, pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ConfigurationError(
                f"GRISTMILL_WORK_POOL={pool} but the server has no deployment {name}: run "
                f"`prefect --no-prompt deploy --all` from the repo root (prefect.yaml)"
            ) from None
    if deployment.work_pool_name != pool:
        raise ConfigurationError(
            f"deployment {name} is on work pool {deployment.work_pool_name!r}, not "
            f"GRISTMILL_WORK_POOL={pool!r}: deploy it to {pool!r} or change the setting"
        )


def ensure_crash_detection(silence_s: float) -> None:
    """The server marks a shard run Crashed when it goes silent: no sign of life (a flow run
    sends a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, 180 by default) and no
    end for `silence_s` seconds, which is what a worker killed with its machine looks like.
    Prefect's documented way ("detect zombie flows"): a proactive automation on the heartbeat
    events, limited to shard runs by their tag. The steps of a run's start (Pending, Submitting,
    the pull step, Running) count as signs of life too: a worker killed while it was starting a
    run leaves it Submitting for ever, with no heartbeat ever sent (seen in
    tests/e2e/test_shards_pool.py: its parent waited without end). Created once per server; updated
    if it changed. The parent then sees the Crashed run and submits the shard again."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    ends = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    alive = {
        f"prefect.flow-run.{s}"
        for s in ("heartbeat", "Pending", "Submitting", "pull-step.executed", "Running")
    }
    wanted = Automation(
        name=CRASH_AUTOMATION,
        description="Marks gristmill shard runs Crashed when their worker stops answering, so "
        "the job's parent runs them again (pipelines/shards.py).",
        trigger=EventTrigger(
            after=alive,  # each sign of life starts the wait for the next one
            expect={*alive, *ends},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {"prefect.resource.id": f"prefect.tag.{SHARD_TAG}", "prefect.resource.role": "tag"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {silence_s:.0f} s: its worker is gone",
            )
        ],
    )
    try:
        found: Any = Automation.read(name=CRASH_AUTOMATION)  # sync here (async_dispatch)
    except ValueError:
        wanted.create()
        return
    trigger, want = found.trigger, wanted.trigger
    if any(getattr(trigger, k, None) != getattr(want, k) for k in ("within", "after", "expect")):
        found.trigger, found.actions = wanted.trigger, wanted.actions
        found.update()


def lost_shards(results: Sequence[ShardResult]) -> dict[int, str]:
    """The shards that left no report, by number, with why."""
    return {r.shard: r.error or "no report" for r in results if r.report is None}


def lost_items(results: Sequence[ShardResult], keys: Iterable[str], shards: int) -> dict[str, str]:
    """The items (by their shard key) whose shard left no report, each with why in words:
    the parent reports them failed, so nothing of a lost shard goes missing from its report."""
    lost = lost_shards(results)
    return {
        key: f"shard {number + 1}/{shards} did not finish: {lost[number]}"
        for key in keys
        if (number := shard_of(key, shards)) in lost
    }


def shard_failures(results: Sequence[ShardResult]) -> list[str]:
    """The shards that left no report, in words."""
    return [
        f"shard {r.shard + 1}/{len(results)} left no report ({r.error})"
        for r in results
        if r.report is None
    ]
