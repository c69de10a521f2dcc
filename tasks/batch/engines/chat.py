"""Online chat completions, row by row, under a shared `RateLimiter`.

Who retries what in the online path (so retries never multiply):
- the openai client is built with `max_retries=0`: the SDK never retries on its own;
- `ChatRowEngine._call` retries transport faults itself, because only it can see the whole run:
  a 429 pauses the shared `RateLimiter` (all workers) for Retry-After and the row is retried
  (up to `max_rate_limit_retries` times, so a 429 storm slows the run down, it does not fail
  rows); a 5xx, timeout or dropped connection is retried for that row alone with jittered
  exponential backoff (`transport_retries` times); 400/401/403/404/422 are never retried;
- invalid output (not JSON, or not the schema) is retried per row: once hotter, then with a
  repair prompt carrying the validation errors (as `generate_structured` does);
- Prefect task retries are not used: a row batch task never raises for a row's failure.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from tasks.batch.engines.protocol import RowCallback, call_cost
from tasks.batch.job import RecordJob, build_messages, check_answer, response_format
from tasks.batch.limits import RateLimiter, Slot, retry_after, share_prefect_limit
from tasks.batch.reading import Row
from tasks.batch.results import RowResult, failed_result, failure_reason, ok_result
from tasks.errors import ConfigurationError, LLMError
from tasks.llm import PERMANENT_STATUS, REPAIR_PROMPT, Usage, openai_client
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
        if limiter is None:
            limiter = RateLimiter(
                settings.batch_concurrency, settings.batch_rpm, settings.batch_tpm
            )
            if settings.batch_global_limit:
                share_prefect_limit(limiter, settings.batch_global_limit)
        return cls(
            client,
            job,
            limiter,
            price=settings.price_of(job.model),
            validation_attempts=settings.llm_validation_attempts,
            transport_retries=settings.llm_max_retries,
            use_json_schema=settings.llm_json_schema,
            secrets=(settings.openai_api_key,),
        )

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        def one(row: Row) -> RowResult:
            result = self.process_row(row)
            on_done(row, result)
            return result

        return [future.result() for future in [self._pool.submit(one, row) for row in rows]]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def process_row(self, row: Row) -> RowResult:
        """One row: validated, retried hotter, then repaired; never raises."""
        base = build_messages(self.job, row.text, describe_schema=not self.use_json_schema)
        messages = base
        usage = Usage()
        errors: list[str] = []
        text = ""
        model = self.model
        try:
            for attempt in range(1, self.validation_attempts + 1):
                if attempt >= 3 and errors:
                    repair = REPAIR_PROMPT.format(errors="; ".join(errors))
                    messages = [
                        *base,
                        {"role": "assistant", "content": text[:4000]},
                        {"role": "user", "content": repair},
                    ]
                temperature = min(self.job.temperature + 0.4 * (attempt - 1), 1.2)
                text, finish, call_usage, model = self._call(messages, temperature)
                usage = usage + call_usage
                value, errors = check_answer(self.job, text, finish)
                if not errors:
                    return ok_result(row, value, usage, model)
        except LLMError as exc:
            return failed_result(row, failure_reason(exc), usage, model)
        except Exception as exc:
            return failed_result(row, self._clean(failure_reason(exc)), usage, model)
        reason = (
            f"output did not fit the schema after {self.validation_attempts} attempts: "
            + "; ".join(errors[:3])
        )
        return failed_result(row, reason, usage, model)

    def _call(self, messages: list[Any], temperature: float) -> tuple[str, str | None, Usage, str]:
        """One chat call, retried on transport faults; a 429 pauses the whole run."""
        import openai

        from tasks.tokens import count_tokens

        estimate = 0
        if self.limiter.counts_tokens:
            prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages)
            estimate = prompt + COMPLETION_TOKENS_ESTIMATE
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
        }
        fmt = response_format(self.job, self.use_json_schema)
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
                    if faults >= self.transport_retries:
                        raise LLMError(
                            f"LLM endpoint answered with a body that is not JSON "
                            f"({faults + 1} attempts)",
                            transient=True,
                            attempts=faults + 1,
                        ) from None
                    faults += 1
                    delay = _backoff(faults)
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
                    if faults >= self.transport_retries:
                        what = (
                            "timed out"
                            if isinstance(exc, openai.APITimeoutError)
                            else "could not reach the endpoint"
                        )
                        raise LLMError(
                            f"LLM request {what} ({faults + 1} attempts)",
                            transient=True,
                            attempts=faults + 1,
                        ) from None
                    faults += 1
                    delay = _backoff(faults)
                else:
                    return self._answer(reply, messages, slot)
            time.sleep(delay)

    def _answer(
        self, reply: Any, messages: list[Any], slot: Slot
    ) -> tuple[str, str | None, Usage, str]:
        """Text, finish reason, usage and model from a chat-completion JSON body."""
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise LLMError("LLM answered with no choices", transient=True)
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        usage_body = reply.get("usage")
        if isinstance(usage_body, dict) and "prompt_tokens" in usage_body:
            prompt = int(usage_body.get("prompt_tokens") or 0)
            completion = int(usage_body.get("completion_tokens") or 0)
        else:
            from tasks.tokens import count_tokens

            prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages)
            completion = count_tokens(text)
        self.limiter.true_up(slot, prompt + completion)
        usage = Usage(
            calls=1,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=call_cost(self.price, prompt, completion),
        )
        return text, choice.get("finish_reason"), usage, reply.get("model") or self.model

    def _clean(self, message: str) -> str:
        return redact(message, *self._secrets)[:300]


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.5 s doubling, capped at 8 s."""
    return random.uniform(0.5, 1.0) * min(0.5 * 2 ** (attempt - 1), 8.0)
