"""The LLM engine: one small protocol, the OpenAI-compatible client, and structured generation.

Who retries what (so retries never multiply):
- transport faults (429 honouring Retry-After, 5xx, timeouts, dropped connections) are retried by
  the openai SDK inside one `complete` call: `max_retries` with exponential backoff and jitter;
- invalid output (not JSON, or not the schema) is retried by `ask_until_valid`, the one
  structured-generation loop (summaries, answers and batch rows all go through it): once more at
  a higher temperature, then with a repair prompt that carries the validation errors back;
- Prefect task retries are not used for LLM calls: a transient failure that outlived the SDK's
  retries fails that item with its reason, and a re-run resumes from the cached chunks.
Permanent faults (400, 401, 403, 404, 422) are never retried.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from tasks.errors import ConfigurationError, LLMError, OutputValidationError
from tasks.portable import make_portable, portable_reduce
from tasks.redaction import redact
from tasks.tokens import count_tokens

if TYPE_CHECKING:
    import openai

    from tasks.settings import ModelPrice, Settings

M = TypeVar("M", bound=BaseModel)

ChatMessage = dict[str, str]

PERMANENT_STATUS = frozenset({400, 401, 403, 404, 409, 413, 422})


class Usage(BaseModel):
    """Tokens and estimated cost of one or more LLM calls."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 8),
        )

    @classmethod
    def of_call(
        cls,
        prompt_tokens: int,
        completion_tokens: int,
        price: ModelPrice | None,
        factor: float = 1.0,
    ) -> Usage:
        """One call's tokens and estimated cost (`factor`: a discount, such as the Batch API's)."""
        cost = 0.0
        if price is not None:
            cost = (prompt_tokens * price.input + completion_tokens * price.output) * factor / 1e6
        return cls(
            calls=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=round(cost, 8),
        )

    @classmethod
    def total(cls, usages: list[Usage]) -> Usage:
        result = cls()
        for usage in usages:
            result = result + usage
        return result


class Completion(BaseModel):
    """What one chat call returned."""

    text: str
    model: str
    usage: Usage
    finish_reason: str | None = None


class LLM(Protocol):
    """A chat model that can be asked for text or for JSON that fits a schema."""

    engine: str
    model: str

    def complete(
        self,
        messages: list[ChatMessage],
        *,
        temperature: float | None = None,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
    ) -> Completion: ...


def count_prompt_tokens(messages: list[Any]) -> int:
    """Tokens of the messages' contents (an estimate where the server reports no usage)."""
    return sum(count_tokens(str(m.get("content", ""))) for m in messages)


def completion_from_body(
    body: Any,
    messages: list[Any],
    *,
    model: str,
    price: ModelPrice | None,
    price_factor: float = 1.0,
) -> Completion:
    """A chat-completion JSON body (online, or a Batch API output line) as a `Completion`."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise LLMError("LLM answered with no choices", transient=True)
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    text = content if isinstance(content, str) else ""
    usage = body.get("usage")
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
    else:
        prompt, completion = count_prompt_tokens(messages), count_tokens(text)
    return Completion(
        text=text,
        model=body.get("model") or model,
        usage=Usage.of_call(prompt, completion, price, price_factor),
        finish_reason=choice.get("finish_reason"),
    )


def response_format(
    schema: dict[str, Any], name: str, *, strict: bool = True, use_json_schema: bool = True
) -> dict[str, Any]:
    """The request's `response_format`: the JSON schema, or JSON mode for servers without it."""
    if not use_json_schema:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    }


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema OpenAI's strict structured outputs accept for `model`."""
    import openai

    schema = dict(openai.pydantic_function_tool(model)["function"]["parameters"])
    _drop_keys(schema, _UNSUPPORTED_IN_STRICT)
    return schema


# String length bounds are checked by pydantic on arrival; strict mode on some servers rejects them.
_UNSUPPORTED_IN_STRICT = frozenset({"minLength", "maxLength"})


def _drop_keys(node: Any, keys: frozenset[str]) -> None:
    if isinstance(node, dict):
        for key in keys & node.keys():
            del node[key]
        for value in node.values():
            _drop_keys(value, keys)
    elif isinstance(node, list):
        for value in node:
            _drop_keys(value, keys)


def openai_client(settings: Settings, *, max_retries: int | None = None) -> openai.OpenAI:
    """An openai SDK client for the configured endpoint (a local server may need no key)."""
    import openai

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
    return openai.OpenAI(
        api_key=key,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries if max_retries is None else max_retries,
    )


def configured_client(settings: Settings, what: str, hint: str) -> openai.OpenAI:
    """`openai_client` for `what` (the engine or embedder that calls it); a ConfigurationError
    with `hint` when neither a key nor a base URL says where the endpoint is."""
    if not (settings.openai_api_key or settings.openai_base_url):
        raise ConfigurationError(f"{what} needs an endpoint", hint=hint)
    return openai_client(settings)


def llm_error(
    exc: Exception, what: str, attempts: int, secrets: tuple[SecretStr | None, ...] = ()
) -> LLMError:
    """An openai SDK error as an `LLMError`: transient or not, with the secrets redacted."""
    import openai

    message = redact(str(getattr(exc, "message", None) or exc or type(exc).__name__), *secrets)
    message = message[:300]
    if isinstance(exc, openai.APIStatusError):
        return LLMError(
            f"{what} request failed with HTTP {exc.status_code}: {message}",
            transient=exc.status_code not in PERMANENT_STATUS,
            status_code=exc.status_code,
        )
    if isinstance(exc, openai.APITimeoutError):
        return LLMError(
            f"{what} request timed out after {attempts} attempts",
            transient=True,
            attempts=attempts,
        )
    return LLMError(
        f"could not reach the {what} endpoint: {message}", transient=True, attempts=attempts
    )


class OpenAILLM:
    """Chat completions through the openai SDK against any OpenAI-compatible endpoint."""

    engine = "openai"

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        *,
        temperature: float = 0.2,
        price: ModelPrice | None = None,
        use_json_schema: bool = True,
        secrets: tuple[SecretStr | None, ...] = (),
        max_in_flight: int | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.price = price
        self.use_json_schema = use_json_schema
        self._secrets = secrets
        # The run-wide cap on calls in flight, whichever tasks and pools the calls come from.
        self._slots: contextlib.AbstractContextManager[Any] = (
            threading.BoundedSemaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAILLM:
        """Build the client from settings; a local endpoint may need no key."""
        client = configured_client(
            settings,
            "the openai engine",
            hint="set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI server)",
        )
        llm = cls(
            client,
            settings.llm_model,
            temperature=settings.llm_temperature,
            price=settings.price_of(settings.llm_model),
            use_json_schema=settings.llm_json_schema,
            secrets=(settings.openai_api_key,),
            max_in_flight=settings.llm_concurrency,
        )
        return make_portable(llm, cls.from_settings, settings)

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as its settings; built there once per process, so the cap on
        calls in flight (`llm_concurrency`) holds per process (docs/deployment.md)."""
        return portable_reduce(self)

    def complete(
        self,
        messages: list[ChatMessage],
        *,
        temperature: float | None = None,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
    ) -> Completion:
        import openai

        kwargs: dict[str, Any] = {}
        if json_schema is not None:
            kwargs["response_format"] = response_format(
                json_schema, schema_name, use_json_schema=self.use_json_schema
            )
        try:
            with self._slots:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.temperature if temperature is None else temperature,
                    **kwargs,
                )
        except openai.APIError as exc:
            raise llm_error(exc, "LLM", self.client.max_retries + 1, self._secrets) from None
        if not response.choices:
            raise LLMError("LLM answered with no choices", transient=True)
        choice = response.choices[0]
        text = choice.message.content or ""
        if response.usage is not None:
            prompt_tokens = response.usage.prompt_tokens
            completion_tokens = response.usage.completion_tokens
        else:
            prompt_tokens, completion_tokens = count_prompt_tokens(messages), count_tokens(text)
        return Completion(
            text=text,
            model=response.model or self.model,
            usage=Usage.of_call(prompt_tokens, completion_tokens, self.price),
            finish_reason=choice.finish_reason,
        )


REPAIR_PROMPT = (
    "Your previous answer could not be used: {errors}\n"
    "Answer again with only a JSON object that fits the schema exactly. "
    "Keep the content of your previous answer where it was valid."
)


CUT_OFF = "the answer was cut off at the output token limit: be more concise"

Check = Callable[[str], tuple[Any, list[str]]]
"""Reads a model's answer: the value, or readable errors saying why it cannot be used."""

Ask = Callable[[list[ChatMessage], float], Completion]
"""One chat call with these messages at this temperature."""


def validation_errors(
    text: str, response_model: type[BaseModel]
) -> tuple[BaseModel | None, list[str]]:
    """Parse `text` as `response_model`; return the instance or readable errors."""
    try:
        return response_model.model_validate_json(strip_fences(text)), []
    except ValidationError as exc:
        errors = []
        for error in exc.errors()[:10]:
            where = ".".join(str(p) for p in error["loc"]) or "(root)"
            errors.append(f"{where}: {error['msg']}")
        return None, errors


def strip_fences(text: str) -> str:
    """Accept JSON wrapped in a Markdown code fence, as some local models answer."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


def check_completion(completion: Completion, check: Check) -> tuple[Any, list[str]]:
    """`check` on the answer's text; an answer cut off at the token limit says so."""
    value, errors = check(completion.text)
    if errors and completion.finish_reason == "length":
        errors = [*errors, CUT_OFF]
    return value, errors


def repair_messages(messages: list[Any], answer: str, errors: list[str]) -> list[Any]:
    """The conversation again, with the unusable answer and what was wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": answer[:4000]},
        {"role": "user", "content": REPAIR_PROMPT.format(errors="; ".join(errors))},
    ]


@dataclass
class StructuredOutcome:
    """What asking for checked output came to, with what every call of it cost."""

    valid: bool = False
    value: Any = None
    errors: list[str] = field(default_factory=list)
    """Why the last answer could not be used (empty when valid)."""
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    model: str = ""
    """The model that gave the last answer."""
    last_output: str = ""
    failure: Exception | None = None
    """What a call or a check raised (a transport error, say): the loop stopped there."""


def ask_until_valid(
    ask: Ask,
    messages: list[Any],
    check: Check,
    *,
    attempts: int = 3,
    temperature: float = 0.2,
    temperature_step: float = 0.4,
    model: str = "",
) -> StructuredOutcome:
    """The structured-generation loop: ask, check; on unusable output ask again, once hotter, then
    with a repair prompt carrying the errors. Never raises: see `StructuredOutcome.failure`."""
    outcome = StructuredOutcome(model=model)
    conversation = list(messages)
    for attempt in range(1, attempts + 1):
        if attempt >= 3 and outcome.errors:
            conversation = repair_messages(messages, outcome.last_output, outcome.errors)
        hotter = min(temperature + temperature_step * (attempt - 1), 1.2)
        try:
            completion = ask(conversation, hotter)
            outcome.usage = outcome.usage + completion.usage
            outcome.attempts, outcome.model = attempt, completion.model
            outcome.last_output = completion.text
            value, outcome.errors = check_completion(completion, check)
        except Exception as exc:
            outcome.failure = exc
            return outcome
        if not outcome.errors:
            outcome.valid, outcome.value = True, value
            return outcome
    return outcome


def generate_structured(
    llm: LLM,
    messages: list[ChatMessage],
    response_model: type[M],
    *,
    attempts: int = 3,
    temperature: float = 0.2,
    temperature_step: float = 0.4,
) -> tuple[M, Usage, int]:
    """Ask `llm` for `response_model` through `ask_until_valid`.

    Returns the validated instance, the usage of every call made, and the number of attempts;
    raises what a call raised, or `OutputValidationError` when no answer fit.
    """
    schema = strict_json_schema(response_model)

    def ask(conversation: list[ChatMessage], hotter: float) -> Completion:
        return llm.complete(
            conversation,
            temperature=hotter,
            json_schema=schema,
            schema_name=response_model.__name__,
        )

    outcome = ask_until_valid(
        ask,
        messages,
        lambda text: validation_errors(text, response_model),
        attempts=attempts,
        temperature=temperature,
        temperature_step=temperature_step,
    )
    if outcome.failure is not None:
        raise outcome.failure
    if outcome.valid:
        return outcome.value, outcome.usage, outcome.attempts
    raise OutputValidationError(
        f"model output did not fit {response_model.__name__} after {attempts} attempts: "
        + "; ".join(outcome.errors[:3]),
        errors=outcome.errors,
        last_output=outcome.last_output[:2000],
        attempts=attempts,
    )


def dumps_for_prompt(value: Any) -> str:
    """Compact JSON for embedding data in a prompt."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
