"""The OpenAI engine over real HTTP against the local fake server: retries, repair, errors."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import SecretStr

from tasks.errors import LLMError, OutputValidationError
from tasks.llm import OpenAILLM, generate_structured, strict_json_schema
from tasks.settings import ModelPrice, Settings
from tasks.summaries import MeetingNotes
from tests.support.openai_server import FakeOpenAI, Fault, module_server

KEY = "sk-test-very-secret-key-1234567890"


server = module_server(KEY)


@pytest.fixture
def llm(server: FakeOpenAI) -> OpenAILLM:
    server.reset()
    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=2, timeout=2)
    return OpenAILLM(
        client,
        "gpt-4o-mini",
        price=ModelPrice(input=0.15, output=0.60),
        secrets=(SecretStr(KEY),),
    )


MESSAGES = [{"role": "user", "content": "Summarise: Alice: we ship on Friday."}]


def test_structured_output_is_validated_and_costed(llm: OpenAILLM, server: FakeOpenAI) -> None:
    notes, usage, attempts = generate_structured(llm, MESSAGES, MeetingNotes)
    assert isinstance(notes, MeetingNotes)
    assert attempts == 1 and usage.calls == 1
    assert usage.prompt_tokens > 0 and usage.cost_usd > 0
    sent = server.requests[-1].body
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == strict_json_schema(MeetingNotes)


def test_429_with_retry_after_is_retried_by_the_sdk(llm: OpenAILLM, server: FakeOpenAI) -> None:
    server.enqueue(Fault.status(429, retry_after=0.2), Fault.status(503))
    completion = llm.complete(MESSAGES)
    assert completion.text
    assert server.calls == 3


def test_transient_errors_that_outlive_retries_are_marked_transient(
    llm: OpenAILLM, server: FakeOpenAI
) -> None:
    server.enqueue(*[Fault.status(500)] * 3)
    with pytest.raises(LLMError) as caught:
        llm.complete(MESSAGES)
    assert caught.value.transient and caught.value.status_code == 500
    assert server.calls == 3


def test_timeouts_and_dropped_connections_are_transient(llm: OpenAILLM, server: FakeOpenAI) -> None:
    fast = OpenAILLM(llm.client.with_options(timeout=0.3, max_retries=0), "gpt-4o-mini")
    server.enqueue(Fault.slow(1.0))
    with pytest.raises(LLMError, match="timed out") as caught:
        fast.complete(MESSAGES)
    assert caught.value.transient
    server.enqueue(Fault.drop())
    with pytest.raises(LLMError, match="could not reach") as caught:
        fast.complete(MESSAGES)
    assert caught.value.transient


@pytest.mark.parametrize("status", [400, 404])
def test_permanent_errors_fail_at_once(llm: OpenAILLM, server: FakeOpenAI, status: int) -> None:
    server.enqueue(Fault.status(status))
    with pytest.raises(LLMError) as caught:
        llm.complete(MESSAGES)
    assert not caught.value.transient and caught.value.status_code == status
    assert server.calls == 1


def test_wrong_key_fails_fast_and_never_shows_the_key(server: FakeOpenAI) -> None:
    server.reset()
    wrong = "sk-wrong-key-abcdef123456"
    client = openai.OpenAI(api_key=wrong, base_url=server.base_url, max_retries=3)
    llm = OpenAILLM(client, "gpt-4o-mini", secrets=(SecretStr(wrong),))
    with pytest.raises(LLMError) as caught:
        llm.complete(MESSAGES)
    assert caught.value.status_code == 401 and len(server.requests) == 1
    assert wrong not in str(caught.value) and "sk-" not in str(caught.value)


def test_malformed_json_is_retried_hotter(llm: OpenAILLM, server: FakeOpenAI) -> None:
    server.enqueue(Fault.malformed_json())
    _, usage, attempts = generate_structured(llm, MESSAGES, MeetingNotes, temperature=0.2)
    assert attempts == 2 and usage.calls == 2
    temperatures = [r.body["temperature"] for r in server.requests]
    assert temperatures[1] > temperatures[0]


def test_repair_prompt_carries_validation_errors(llm: OpenAILLM, server: FakeOpenAI) -> None:
    server.enqueue(Fault.schema_invalid(), Fault.schema_invalid())
    _, _, attempts = generate_structured(llm, MESSAGES, MeetingNotes)
    assert attempts == 3
    repair = server.requests[-1].body["messages"]
    assert repair[-1]["role"] == "user" and "could not be used" in repair[-1]["content"]
    assert repair[-2]["role"] == "assistant"


def test_output_that_never_validates_raises_with_the_errors(
    llm: OpenAILLM, server: FakeOpenAI
) -> None:
    server.enqueue(*[Fault.content('{"summary": ""}')] * 3)
    with pytest.raises(OutputValidationError) as caught:
        generate_structured(llm, MESSAGES, MeetingNotes)
    assert caught.value.attempts == 3 and caught.value.errors


def test_fenced_json_from_local_models_is_accepted(llm: OpenAILLM, server: FakeOpenAI) -> None:
    body = {
        "summary": "Shipped.",
        "key_points": [],
        "action_items": [],
        "decisions": [],
        "participants": ["Alice"],
    }
    server.enqueue(Fault.content("```json\n" + json.dumps(body) + "\n```"))
    notes, _, attempts = generate_structured(llm, MESSAGES, MeetingNotes)
    assert notes.participants == ["Alice"] and attempts == 1


def test_settings_honour_openai_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.llm_engine == "openai"
    assert KEY not in repr(settings) and KEY not in str(settings.masked())
    llm = OpenAILLM.from_settings(settings)
    assert str(llm.client.base_url).startswith("http://127.0.0.1:9")
