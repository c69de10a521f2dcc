"""Online chat completions, row by row, under a shared `RateLimiter`.

Who retries what in the online path (so retries never multiply):
- the openai client is built with `max_retries=0`: the SDK never retries on its own;
- `ChatRowEngine._call` retries transport faults itself, because only it can see the whole run:
  a 429 pauses the shared `RateLimiter` (all workers) for Retry-After and the row is retried
  (up to `max_rate_limit_retries` times, so a 429 storm slows the run down, it does not fail
  rows); a 5xx, timeout or dropped connection is retried for that row alone with jittered
  exponential backoff (`transport_retries` times); 400/401/403/404/422 are never retried;
- invalid output (not JSON, or not the schema) is retried per row: once hotter, then with a
  repair prompt carrying the validation errors (`tasks.llm.ask_until_valid`, as for summaries);
- Prefect task retries are not used: a row batch task never raises for a row's failure.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from tasks.batch.engines.protocol import RowCallback
from tasks.batch.job import RecordJob
from tasks.batch.limits import RateLimiter, Slot, retry_after, share_prefect_limit
from tasks.batch.reading import Row
from tasks.batch.results import RowResult, failed_result, failure_reason, ok_result
from tasks.errors import ConfigurationError, LLMError
from tasks.llm import (
    PERMANENT_STATUS,
    Completion,
    ask_until_valid,
    completion_from_body,
    count_prompt_tokens,
    openai_client,
)
from tasks.portable import make_portable, portable_reduce
from tasks.redaction import redact

if TYPE_CHECKING:
    import openai

    from tasks.settings import ModelPrice, Settings


COMPLETION_TOKENS_ESTIMATE = 256
"""Tokens reserved per request for the answer when a tokens/min limit is set; trued up after."""


class ChatRowEngine:
    """Online chat completions under a shared `RateLimiter`; retries done here (see module doc)."""

    name = "openai"
    journaled = True
    whole_job = False

    def __init__(
        self,
        client: openai.OpenAI,
        job: RecordJob,
        limiter: RateLimiter,
        *,
        price: ModelPrice | None = None,
        validation_attempts: int = 3,
        transport_retries: int = 4,
        max_rate_limit_retries: int = 50,
        use_json_schema: bool = True,
        secrets: tuple[SecretStr | None, ...] = (),
    ) -> None:
        self.client = client
        self.job = job
        self.model = job.model
        self.limiter = limiter
        self.price = price
        self.validation_attempts = validation_attempts
        self.transport_retries = transport_retries
        self.max_rate_limit_retries = max_rate_limit_retries
        self.use_json_schema = use_json_schema
        self._secrets = secrets
        self._pool = ThreadPoolExecutor(limiter.concurrency, thread_name_prefix="gristmill-row")

    @classmethod
    def from_settings(
        cls, settings: Settings, job: RecordJob, limiter: RateLimiter | None = None
    ) -> ChatRowEngine:
        """A client with SDK retries off: this engine retries, limiter-aware."""

        if settings.llm_engine != "openai":
            raise ConfigurationError(
                "a prompt template needs an LLM endpoint, and none is configured",
                hint="set OPENAI_API_KEY (and OPENAI_BASE_URL for a local server such as "
                "vLLM or Ollama), or use an offline --task summarize|classify|embed",
            )
        client = openai_client(settings, max_retries=0)
        own_limiter = limiter is None
        if limiter is None:
            limiter = RateLimiter(
                settings.batch_concurrency, settings.batch_rpm, settings.batch_tpm
            )
            if settings.batch_global_limit:
                share_prefect_limit(limiter, settings.batch_global_limit)
        engine = cls(
            client,
            job,
            limiter,
            price=settings.price_of(job.model),
            validation_attempts=settings.llm_validation_attempts,
            transport_retries=settings.llm_max_retries,
            use_json_schema=settings.llm_json_schema,
            secrets=(settings.openai_api_key,),
        )
        return make_portable(engine, cls.from_settings, settings, job) if own_limiter else engine

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as its settings and job, built there once per process: each
        process then has its own `RateLimiter` with the run's limits, so `batch_concurrency`,
        `batch_rpm` and `batch_tpm` hold per process; `batch_global_limit` (a Prefect global
        concurrency limit) is what paces every worker together (docs/deployment.md)."""
        return portable_reduce(self)

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        def one(row: Row) -> RowResult:
            result = self.process_row(row)
            on_done(row, result)
            return result

        return [future.result() for future in [self._pool.submit(one, row) for row in rows]]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def process_row(self, row: Row) -> RowResult:
        """One row through `ask_until_valid` (retried hotter, then repaired); never raises."""
        outcome = ask_until_valid(
            self._call,
            self.job.messages(row.text, describe_schema=not self.use_json_schema),
            self.job.read_answer,
            attempts=self.validation_attempts,
            temperature=self.job.temperature,
            model=self.model,
        )
        if outcome.valid:
            return ok_result(row, outcome.value, outcome.usage, outcome.model)
        if outcome.failure is not None:
            reason = failure_reason(outcome.failure)
            if not isinstance(outcome.failure, LLMError):
                reason = self._clean(reason)
            return failed_result(row, reason, outcome.usage, outcome.model)
        reason = (
            f"output did not fit the schema after {self.validation_attempts} attempts: "
            + "; ".join(outcome.errors[:3])
        )
        return failed_result(row, reason, outcome.usage, outcome.model)

    def _call(self, messages: list[Any], temperature: float) -> Completion:
        """One chat call, retried on transport faults; a 429 pauses the whole run."""
        import openai

        estimate = 0
        if self.limiter.counts_tokens:
            estimate = count_prompt_tokens(messages) + COMPLETION_TOKENS_ESTIMATE
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
        }
        fmt = self.job.response_format(self.use_json_schema)
        if fmt is not None:
            body["response_format"] = fmt
        rate_limited = faults = 0
        while True:
            delay = 0.0
            with self.limiter.slot(estimate) as slot:
                try:
                    # The SDK's documented raw route (`client.post`, as for undocumented
                    # endpoints): same auth, base_url, timeouts and error classes, but without
                    # `chat.completions.create`'s per-call transform of the typed params and
                    # pydantic construction of the reply. Measured 3.0-3.3 ms -> 1.7 ms of client
                    # CPU per call; at 16 in flight on one GIL that moved the benchmark from
                    # 88 % to 95 % of the cap (benchmarks/README.md).
                    raw = self.client.post("/chat/completions", cast_to=bytes, body=body)
                    reply = json.loads(raw)
                except ValueError:
                    faults += 1
                    delay = self._backoff_or_give_up(
                        faults, "LLM endpoint answered with a body that is not JSON"
                    )
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    if status == 429:
                        rate_limited += 1
                        if rate_limited > self.max_rate_limit_retries:
                            raise LLMError(
                                f"still rate limited (HTTP 429) after {rate_limited} attempts",
                                transient=True,
                                status_code=429,
                                attempts=rate_limited,
                            ) from None
                        wait = retry_after(exc.response)
                        if wait is None:
                            wait = min(0.5 * 2 ** min(rate_limited, 8), 30.0)
                        self.limiter.pause(min(wait, 120.0), slot)
                        continue
                    if status in PERMANENT_STATUS or faults >= self.transport_retries:
                        raise LLMError(
                            f"LLM request failed with HTTP {status}: {self._clean(str(exc))}",
                            transient=status not in PERMANENT_STATUS,
                            status_code=status,
                            attempts=faults + 1,
                        ) from None
                    faults += 1
                    delay = _backoff(faults)
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    faults += 1
                    timed_out = isinstance(exc, openai.APITimeoutError)
                    what = "timed out" if timed_out else "could not reach the endpoint"
                    delay = self._backoff_or_give_up(faults, f"LLM request {what}")
                else:
                    return self._answer(reply, messages, slot)
            time.sleep(delay)

    def _backoff_or_give_up(self, faults: int, failure: str) -> float:
        """The pause before the next attempt after `faults` transient faults in a row, or, once
        the transport retries are spent, the LLMError saying `failure` and the attempts made."""
        if faults > self.transport_retries:
            raise LLMError(f"{failure} ({faults} attempts)", transient=True, attempts=faults)
        return _backoff(faults)

    def _answer(self, reply: Any, messages: list[Any], slot: Slot) -> Completion:
        """The reply as a `Completion`; the limiter charged the tokens it really took."""
        completion = completion_from_body(reply, messages, model=self.model, price=self.price)
        self.limiter.true_up(
            slot, completion.usage.prompt_tokens + completion.usage.completion_tokens
        )
        return completion

    def _clean(self, message: str) -> str:
        return redact(message, *self._secrets)[:300]


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.5 s doubling, capped at 8 s."""
    return random.uniform(0.5, 1.0) * min(0.5 * 2 ** (attempt - 1), 8.0)
