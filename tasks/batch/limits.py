"""Rate limits shared by every thread of a run, and optionally by every process through Prefect.

Rate limits: `RateLimiter` enforces concurrency, requests/min and tokens/min in-process, shared
by every thread of the run. With several processes or workers sharing one endpoint quota, set
`batch_global_limit` to a Prefect global concurrency limit with slot decay (`prefect gcl create
batch-openai --limit 16 --slot-decay-per-second 2.5`): every request then also takes a slot of
it, through `prefect.concurrency.sync.rate_limit`, so the server paces all of them together.
Slots are taken in blocks (up to half the limit, at most the run's concurrency) to keep that to
one API call per block of requests, not one per request.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tasks.errors import ConfigurationError


@dataclass
class Slot:
    """A granted request: when it was sent, and what was reserved for it."""

    dispatched_at: float
    reserved_tokens: int


class RateLimiter:
    """Concurrency, requests/min and tokens/min for every thread of a run, and run-wide pauses.

    Requests and tokens are token buckets refilled continuously (capacity: one second's worth,
    so a limit is never exceeded in any minute). A request larger than the token bucket waits
    for a full bucket and then goes, leaving the bucket in debt. `pause(seconds)` (a 429's
    Retry-After) stops every new request of the run until it ends; a 429 for a request sent
    before the current pause began does not extend it (it reports the same overload).
    """

    def __init__(
        self,
        concurrency: int,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._slots = threading.BoundedSemaphore(concurrency)
        self._cond = threading.Condition()
        self._req_rate = rpm / 60 if rpm else math.inf
        self._req_cap = max(1.0, self._req_rate) if rpm else math.inf
        self._tok_rate = tpm / 60 if tpm else math.inf
        self._tok_cap = max(1.0, self._tok_rate) if tpm else math.inf
        self._requests = self._req_cap
        self._tokens = self._tok_cap
        self._refilled = clock()
        self._pause_until = 0.0
        self._paused_at = -math.inf
        self.pauses = 0
        self.paused_s = 0.0
        self._global_take: Callable[[int], None] | None = None
        self._global_block = 1
        self._global_allowance = 0
        self._global_lock = threading.Lock()
        self.global_acquisitions = 0

    def share_globally(self, take: Callable[[int], None], block: int) -> None:
        """Also take one permit per request from `take(n)` (blocking), `block` at a time."""
        self._global_take = take
        self._global_block = max(1, block)

    def _global_permit(self) -> None:
        if self._global_take is None:
            return
        with self._global_lock:
            if self._global_allowance == 0:
                self._global_take(self._global_block)
                self._global_allowance = self._global_block
                self.global_acquisitions += 1
            self._global_allowance -= 1

    @property
    def counts_tokens(self) -> bool:
        return self.tpm is not None

    def _refill(self, now: float) -> None:
        elapsed = now - self._refilled
        self._refilled = now
        if self.rpm:
            self._requests = min(self._req_cap, self._requests + elapsed * self._req_rate)
        if self.tpm:
            self._tokens = min(self._tok_cap, self._tokens + elapsed * self._tok_rate)

    def _wait_for(self, tokens: int) -> float:
        wait = 0.0
        if self.rpm and self._requests < 1:
            wait = (1 - self._requests) / self._req_rate
        if self.tpm and self._tokens < min(tokens, self._tok_cap):
            wait = max(wait, (min(tokens, self._tok_cap) - self._tokens) / self._tok_rate)
        return wait

    @contextlib.contextmanager
    def slot(self, tokens: int = 0) -> Iterator[Slot]:
        """Wait for a free slot, the end of any pause and room in both buckets."""
        self._slots.acquire()
        try:
            self._global_permit()
            with self._cond:
                while True:
                    now = self._clock()
                    self._refill(now)
                    wait = self._pause_until - now
                    if wait <= 0:
                        wait = self._wait_for(tokens)
                    if wait <= 0:
                        self._requests -= 1
                        self._tokens -= tokens
                        break
                    self._cond.wait(min(wait, 1.0))
            yield Slot(dispatched_at=now, reserved_tokens=tokens)
        finally:
            self._slots.release()

    def true_up(self, slot: Slot, used_tokens: int) -> None:
        """Charge the difference between the tokens reserved and the tokens used."""
        if self.tpm:
            with self._cond:
                self._tokens -= used_tokens - slot.reserved_tokens

    def pause(self, seconds: float, slot: Slot) -> None:
        """Stop the whole run for `seconds` (unless this 429 predates the current pause)."""
        with self._cond:
            now = self._clock()
            if slot.dispatched_at < self._paused_at:
                return
            until = now + seconds
            if until > self._pause_until:
                self.paused_s += until - max(now, self._pause_until)
                self._pause_until = until
            self._paused_at = now
            self.pauses += 1
            self._cond.notify_all()


def share_prefect_limit(limiter: RateLimiter, name: str) -> None:
    """Pace `limiter`'s requests with the Prefect global concurrency limit `name` as well.

    The limit must exist and have a slot decay (that is what makes it a rate); a missing one is
    a configuration error with the command that creates it, raised before any row is sent.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import rate_limit
    from prefect.exceptions import ObjectNotFound

    hint = f"create it: prefect gcl create {name} --limit 16 --slot-decay-per-second 2.5"
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        raise ConfigurationError(
            f"the Prefect global concurrency limit {name!r} does not exist", hint=hint
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"cannot read the Prefect global concurrency limit {name!r}: {exc}",
            hint="batch_global_limit needs a reachable Prefect server (PREFECT_API_URL)",
        ) from None
    if not limit.slot_decay_per_second:
        raise ConfigurationError(
            f"the Prefect global concurrency limit {name!r} has no slot decay, so it is not a "
            "rate limit",
            hint=f"prefect gcl update {name} --slot-decay-per-second 2.5",
        )
    block = max(1, min(limiter.concurrency, limit.limit // 2))
    limiter.share_globally(lambda n: rate_limit(name, occupy=n, strict=True), block)


def retry_after(response: Any) -> float | None:
    """Seconds to wait from a response's retry-after-ms or Retry-After header."""
    headers = getattr(response, "headers", None) or {}
    with contextlib.suppress(TypeError, ValueError):
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None
