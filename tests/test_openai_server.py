"""The fake OpenAI server, driven by the real openai SDK over real HTTP."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, ValidationError

from tests.support.openai_server import FakeOpenAI, Fault, invalid_instance, schema_instance

KEY = "sk-test"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


class Speaker(BaseModel):
    name: str
    role: Literal["host", "guest"]


class Summary(BaseModel):
    title: str
    minutes: int
    score: float
    final: bool
    tags: list[str]
    speakers: list[Speaker]
    lead: Speaker | None
    note: str | None = None


SUMMARY_FORMAT: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {"name": "Summary", "schema": Summary.model_json_schema()},
}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as running:
        yield running


def client_for(server: FakeOpenAI, *, max_retries: int = 0, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=KEY, max_retries=max_retries, timeout=timeout
    )


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with client_for(server) as sdk_client:
        yield sdk_client


def test_chat_completion_echoes_the_last_user_message(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gpt-4o-mini"
    assert reply.usage is not None and reply.usage.total_tokens == 2 + 4
    assert (server.calls, server.completed_calls) == (1, 1)
    recorded = server.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.body["messages"] == MESSAGES
    assert recorded.headers["authorization"] == "<redacted>"
    assert KEY not in repr(server.requests)


def test_json_schema_reply_validates_against_the_schema(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        response_format=SUMMARY_FORMAT,
    )
    summary = Summary.model_validate_json(reply.choices[0].message.content or "")
    assert summary.speakers and summary.lead is not None

    parsed = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=MESSAGES,
        response_format=Summary,
    )
    assert isinstance(parsed.choices[0].message.parsed, Summary)


def test_schema_instance_handles_refs_nullables_enums_and_bounds() -> None:
    schema = {
        "type": "object",
        "required": ["item", "maybe", "count", "kind", "when"],
        "properties": {
            "item": {"$ref": "#/$defs/Item"},
            "maybe": {"type": ["null", "number"], "minimum": 2.5},
            "count": {"type": "integer", "exclusiveMinimum": 3},
            "kind": {"enum": ["a", "b"]},
            "when": {"type": "string", "format": "date"},
            "optional": {"type": "string"},
        },
        "$defs": {
            "Item": {
                "type": "object",
                "required": ["names"],
                "properties": {"names": {"type": "array", "items": {"type": "string"}}},
            }
        },
    }
    assert schema_instance(schema) == {
        "item": {"names": ["text"]},
        "maybe": 2.5,
        "count": 4,
        "kind": "a",
        "when": "1970-01-01",
    }
    broken = invalid_instance(Summary.model_json_schema())
    with pytest.raises(ValidationError):
        Summary.model_validate(broken)


def test_content_faults_return_bad_json_to_chat_only(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(Fault.malformed_json(), Fault.schema_invalid(), Fault.content("plain words"))
    client.embeddings.create(model="text-embedding-3-small", input="not a chat call")
    assert server.pending_faults == 3

    contents = [
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            response_format=SUMMARY_FORMAT,
        )
        .choices[0]
        .message.content
        for _ in range(3)
    ]
    assert contents[0] == '{"summary": "trunc'
    with pytest.raises(ValueError):
        json.loads(contents[0])
    assert isinstance(json.loads(contents[1] or ""), dict)
    with pytest.raises(ValidationError):
        Summary.model_validate_json(contents[1] or "")
    assert contents[2] == "plain words"
    assert server.pending_faults == 0


def test_429_with_retry_after_is_retried_by_the_sdk(server: FakeOpenAI) -> None:
    server.enqueue(Fault.status(429, retry_after=1))
    started = time.monotonic()
    with client_for(server, max_retries=2) as client:
        reply = client.chat.completions.create(model="m", messages=MESSAGES)

    assert reply.choices[0].message.content == "echo: hello there"
    assert time.monotonic() - started >= 0.9
    assert (server.calls, server.completed_calls) == (2, 1)


def test_wrong_key_gets_401_without_echoing_any_key(server: FakeOpenAI) -> None:
    with (
        openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == 401
    error = caught.value.response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["code"] == "invalid_api_key"
    assert "sk-" not in caught.value.response.text


def test_slow_response_past_the_client_timeout_raises_timeout(server: FakeOpenAI) -> None:
    server.enqueue(Fault.slow(3))
    started = time.monotonic()
    with client_for(server, timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert time.monotonic() - started < 1.5
    assert (server.calls, server.completed_calls) == (1, 0)


def test_dropped_connection_raises_connection_error(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(Fault.drop())
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert not isinstance(caught.value, openai.APITimeoutError)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices


def test_faults_filtered_by_path_and_probabilistic_faults(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(Fault.status(503), path="/v1/embeddings")
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="e", input="x")

    server.fault_rate, server.fault_kind = 1.0, Fault.status(400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    server.reset()
    assert server.fault_rate == 0.0 and server.calls == 0 and server.requests == []


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI) -> None:
    many = client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])
    one = client.embeddings.create(model="e", input="a", encoding_format="float")
    wide = client.embeddings.create(model="e", input="a", dimensions=32)

    assert [item.index for item in many.data] == [0, 1, 2]
    vectors = [item.embedding for item in many.data]
    assert all(len(vector) == 8 for vector in vectors)
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert one.data[0].embedding == pytest.approx(vectors[0], rel=1e-6)
    assert len(wide.data[0].embedding) == 32
    assert many.usage.prompt_tokens == 3


def _batch_input(*custom_ids: str) -> io.BytesIO:
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"line {custom_id}"}]},
        }
        for custom_id in custom_ids
    ]
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


def _run_batch(client: openai.OpenAI, *custom_ids: str) -> tuple[list[str], openai.types.Batch]:
    """Upload, create and poll a batch until it ends; return the statuses seen and the batch."""
    upload = client.files.create(file=("in.jsonl", _batch_input(*custom_ids)), purpose="batch")
    assert client.files.retrieve(upload.id).purpose == "batch"
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    statuses: list[str] = [batch.status]
    deadline = time.monotonic() + 5
    while batch.status not in ("completed", "expired", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        batch = client.batches.retrieve(batch.id)
        statuses.append(batch.status)
    return statuses, batch


def _jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_lifecycle_with_a_failed_line(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.batch_polls = 2
    server.batch_failed_ids = {"req-2"}

    statuses, batch = _run_batch(client, "req-1", "req-2", "req-3")

    assert statuses == ["validating", "in_progress", "completed"]
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    outputs = _jsonl(client, batch.output_file_id)
    assert [line["custom_id"] for line in outputs] == ["req-1", "req-3"]
    first = outputs[0]["response"]
    assert first["status_code"] == 200
    assert first["body"]["choices"][0]["message"]["content"] == "echo: line req-1"
    (failed,) = _jsonl(client, batch.error_file_id)
    assert failed["custom_id"] == "req-2"
    assert failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["error"]["type"] == "server_error"


def test_expired_batch_sends_unprocessed_lines_to_the_error_file(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.batch_expire_after = 1

    statuses, batch = _run_batch(client, "a", "b", "c")

    assert statuses == ["validating", "expired"] and batch.expired_at is not None
    assert [line["custom_id"] for line in _jsonl(client, batch.output_file_id)] == ["a"]
    errors = _jsonl(client, batch.error_file_id)
    assert [line["custom_id"] for line in errors] == ["b", "c"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)


def test_max_concurrency_counts_parallel_requests() -> None:
    with FakeOpenAI(latency=0.2) as server, client_for(server) as client:
        barrier = threading.Barrier(8)

        def call() -> None:
            barrier.wait()
            client.chat.completions.create(model="m", messages=MESSAGES)

        threads = [threading.Thread(target=call) for _ in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started

    assert server.completed_calls == 8
    assert server.max_concurrency == 8
    assert elapsed < 0.2 * 8 / 2


def test_stop_is_fast_with_a_slow_request_in_flight() -> None:
    server = FakeOpenAI().start()
    server.enqueue(Fault.slow(30))
    client = client_for(server, timeout=30)
    caller = threading.Thread(target=lambda: _swallow(client), daemon=True)
    caller.start()
    deadline = time.monotonic() + 5
    while server.calls == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
    caller.join(timeout=5)
    assert not caller.is_alive()
    client.close()


def _swallow(client: openai.OpenAI) -> None:
    with suppress(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def test_runs_as_a_script_serving_the_models_list() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_server", "--port", "0", "--quiet"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().split()[-1]
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            models = json.load(response)
        assert [model["id"] for model in models["data"]] == [
            "gpt-4o-mini",
            "text-embedding-3-small",
        ]
    finally:
        process.terminate()
        process.wait(timeout=5)
