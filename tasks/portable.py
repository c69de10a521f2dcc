"""Engines that cross to another process as their recipe, and are built again there once.

A Dask task runner pickles a task's arguments and runs the task in another process, maybe on
another machine. An engine holding HTTP clients, thread pools, locks, an ONNX session or an
open file cannot travel as it is, and should not: what must be shared between processes (a
rate limit, a journal of paid calls, a result cache) lives on shared storage or the Prefect
server, never in one process's memory. So an engine made portable here pickles as the
factory and arguments that built it (settings, a job, a path) plus a token, and unpickles as
the engine that factory builds, built once per process per token: every task of a run on one
worker shares that worker's engine (its connection pool, its in-process rate limiter), and the
process that built the original gets the original back.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_KEEP = 16
"""Engines kept per process: those of the last runs (an evicted one is built again if needed)."""

_built: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


def make_portable(engine: T, factory: Callable[..., T], *args: Any) -> T:
    """Mark `engine` as built by `factory(*args)`: it then pickles as that recipe (see
    `portable_reduce`). The arguments must pickle (settings, a job, a path)."""
    token = uuid.uuid4().hex
    engine._portable_recipe = (token, factory, args)  # type: ignore[attr-defined]
    _remember(token, engine)
    return engine


def portable_reduce(engine: Any) -> tuple[Any, ...]:
    """The `__reduce__` of a portable engine; one without a recipe cannot cross processes."""
    recipe = getattr(engine, "_portable_recipe", None)
    if recipe is None:
        raise TypeError(
            f"{type(engine).__name__} was built from parts, not from settings: it cannot be "
            "sent to another process (a Dask worker); build it with from_settings"
        )
    return (_rebuilt, recipe)


def _rebuilt(token: str, factory: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    with _lock:
        engine = _built.get(token)
        if engine is not None:
            _built.move_to_end(token)
            return engine
    engine = factory(*args)  # outside the lock: building may take a while (a model, a file)
    with _lock:
        engine = _built.setdefault(token, engine)
        engine._portable_recipe = (token, factory, args)
        _trim()
    return engine


def _remember(token: str, engine: Any) -> None:
    with _lock:
        _built[token] = engine
        _trim()


def _trim() -> None:
    while len(_built) > _KEEP:
        _built.popitem(last=False)


def let_go(future: object) -> None:
    """Drop the cluster's copy of a task's result once the flow has read it.

    The flow keeps a Dask future per task until it ends; Dask keeps each result on the worker
    that computed it for as long as a future refers to it, and recomputes every such result
    when that worker dies (PrefectHQ/prefect#15442). A released future is forgotten by the
    scheduler, so a dead worker costs only the tasks it was running. A thread pool's future
    has nothing to release.
    """
    wrapped = getattr(future, "wrapped_future", None)
    release = getattr(wrapped, "release", None)
    if callable(release):
        release()
