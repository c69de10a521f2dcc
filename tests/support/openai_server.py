"""A local HTTP server speaking the OpenAI API, with fault injection, for tests and benchmarks.

    with FakeOpenAI(api_key="sk-test") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        server.enqueue(Fault.status(429, retry_after=1), Fault.malformed_json())
        ...
        assert server.calls == 3

Standard library only, so a benchmark can run it in a bare interpreter:
``python -m tests.support.openai_server --port 8765 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import urlsplit

Responder = Callable[[dict[str, Any]], str]
FaultKind = Literal["status", "slow", "drop", "content", "schema_invalid"]

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "openai-api-key"})
_CONTENT_FAULTS = frozenset({"content", "schema_invalid"})
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "not_found", "The requested resource does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded. Please try again later."),
}
_STRING_FORMATS = {"date-time": "1970-01-01T00:00:00Z", "date": "1970-01-01", "email": "a@b.io"}
_BATCH_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling")


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour of the server; build it with the class methods."""

    kind: FaultKind
    status_code: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    text: str = ""

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Fault:
        """An HTTP error with OpenAI's error body and, if given, a Retry-After header."""
        return cls("status", status_code=code, retry_after=retry_after)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """A normal answer sent only after `seconds`, to run past client timeouts."""
        return cls("slow", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """The connection closed without any response."""
        return cls("drop")

    @classmethod
    def malformed_json(cls, text: str = '{"summary": "trunc') -> Fault:
        """A 200 reply whose content does not parse as JSON (chat only)."""
        return cls("content", text=text)

    @classmethod
    def schema_invalid(cls) -> Fault:
        """A 200 reply with JSON that breaks the request's schema (chat only)."""
        return cls("schema_invalid")

    @classmethod
    def content(cls, text: str) -> Fault:
        """A 200 reply with exactly this content (chat only)."""
        return cls("content", text=text)


class RecordedRequest(NamedTuple):
    """One request as the server saw it; secret headers are redacted, names lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0
    """When it arrived: `time.monotonic()` in this process."""


class _Request(NamedTuple):
    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _BatchJob:
    record: dict[str, Any]
    lines: list[dict[str, Any]]
    polls_needed: int
    failed_ids: frozenset[str]
    expire_after: int | None
    polls: int = 0
    tokens: int = 0


class _BadRequest(Exception):
    """The request body is unusable; answered with a 400."""


def count_tokens(text: str) -> int:
    """A rough token count (four characters a token), never below one."""
    return max(1, len(text) // 4)


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the last user message of a chat request, or "" if there is none."""
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def response_schema(request: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a chat request asks for via `response_format`, or {}."""
    response_format = request.get("response_format") or {}
    return cast(dict[str, Any], (response_format.get("json_schema") or {}).get("schema") or {})


def default_responder(request: dict[str, Any]) -> str:
    """A deterministic reply: a minimal instance for json_schema, "{}" for json_object, or echo."""
    kind = (request.get("response_format") or {}).get("type")
    if kind == "json_schema":
        return json.dumps(schema_instance(response_schema(request)))
    if kind == "json_object":
        return "{}"
    return "echo: " + last_user_text(request)[:50]


def schema_instance(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A minimal JSON value valid for `schema`: required properties only, one item per array."""
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
            if part:
                target = target[part.replace("~1", "/").replace("~0", "~")]
        return schema_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return schema_instance(options[0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties", {})
        return {
            name: schema_instance(properties.get(name, {}), root)
            for name in schema.get("required", [])
        }
    if kind == "array":
        count = min(max(schema.get("minItems", 0), 1), schema.get("maxItems", 1_000))
        return [schema_instance(schema.get("items") or {}, root) for _ in range(count)]
    if kind == "string":
        if schema.get("format") in _STRING_FORMATS:
            return _STRING_FORMATS[schema["format"]]
        text = "text".ljust(schema.get("minLength", 0), "x")
        return text[: schema.get("maxLength", len(text))]
    if kind in ("integer", "number"):
        value = schema.get("minimum", 0)
        if "exclusiveMinimum" in schema:
            value = schema["exclusiveMinimum"] + 1
        value = min(value, schema.get("maximum", value))
        return math.ceil(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    return None


def invalid_instance(schema: dict[str, Any]) -> Any:
    """JSON that parses but breaks `schema`: first required property dropped, the rest mistyped."""
    valid = schema_instance(schema)
    if not isinstance(valid, dict) or not valid:
        return [valid]
    first = next(iter(valid))
    return {key: 123 if isinstance(v, str) else "wrong" for key, v in valid.items() if key != first}


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`: the same text gives the same vector in any run."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=headers or {})


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON for an HTTP status."""
    kind, code, default = _ERRORS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, "Request failed."),
    )
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def _error(status: int, message: str | None = None, retry_after: float | None = None) -> _Reply:
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return _json(status, error_body(status, message), headers)


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.walk():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class FakeOpenAI:
    """An OpenAI-compatible HTTP server on 127.0.0.1 with programmable faults and recording.

    Settable at any time: `latency` (seconds added to every chat/embeddings call), `responder`,
    `fault_rate` with `fault_kind` (seeded random faults), `max_in_flight` (calls beyond it are
    answered 429 at once, as a provider's concurrency quota), `batch_polls` (GET polls until a batch
    ends), `batch_failed_ids` (custom_ids answered with a 500 line), `batch_expire_after`
    (lines processed before a batch expires) and `batch_token_limit` (tokens of open batches
    beyond which a new one fails with token_limit_exceeded); batch settings apply to batches
    created afterwards.
    Read: `requests`, `calls` (chat and embeddings requests, faulted ones included),
    `completed_calls` (answered 200; `answered_at`: when each reply was made, monotonic),
    `max_concurrency` (peak calls in flight), `files`,
    `batch_lines` (request lines run by batches), `batch_events` ((monotonic time, event, batch
    id) for each batch created, refused (failed at once: a bad line, the token limit), ended or
    asked to cancel), `batch_tokens` (tokens of each batch, by id) and `batch_status(id)`.
    `release_batches()` lets batches already running end at their next poll;
    `run_open_batches()` runs the open ones at once.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        responder: Responder | None = None,
        latency: float = 0.0,
        embedding_dim: int = 8,
        batch_polls: int = 1,
        seed: int = 0,
        port: int = 0,
        models: tuple[str, ...] = ("gpt-4o-mini", "text-embedding-3-small"),
        verbose: bool = False,
    ) -> None:
        self.api_key = api_key
        self.responder: Responder = responder or default_responder
        self.latency = latency
        self.embedding_dim = embedding_dim
        self.batch_polls = batch_polls
        self.models = models
        self.verbose = verbose
        self.fault_kind = Fault.status(500)
        self._seed = seed
        self._port = port
        self._lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self.max_in_flight: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget requests, counters, faults, files and batches; keep the configuration."""
        with self._lock:
            self.requests: list[RecordedRequest] = []
            self.calls = 0
            self.completed_calls = 0
            self.answered_at: list[float] = []
            self.refused_calls = 0
            self.max_concurrency = 0
            self._faults: list[tuple[Fault, str | None]] = []
            self._rng = random.Random(self._seed)
            self.fault_rate = 0.0
            self.batch_failed_ids: set[str] = set()
            self.batch_expire_after: int | None = None
            self.batch_token_limit: int | None = None
            self.files: dict[str, dict[str, Any]] = {}
            self._contents: dict[str, bytes] = {}
            self._batches: dict[str, _BatchJob] = {}
            self.batch_lines = 0
            self.batch_events: list[tuple[float, str, str]] = []
            self.batch_tokens: dict[str, int] = {}

    def start(self) -> FakeOpenAI:
        """Bind a free port and serve from a daemon thread."""
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with httpd.connections_lock:
            for connection in list(httpd.connections):
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not running; call start() or use it in a with block")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as `base_url` to `openai.OpenAI`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *faults: Fault, path: str | None = None) -> None:
        """Queue faults for the next model calls, one per call, in order.

        `path` (e.g. "/v1/embeddings") keeps them for calls to that endpoint only. Content faults
        (malformed_json, schema_invalid, content) are only taken by chat completions.
        """
        with self._lock:
            self._faults.extend((fault, path) for fault in faults)

    @property
    def pending_faults(self) -> int:
        """Queued faults not yet consumed."""
        with self._lock:
            return len(self._faults)

    def release_batches(self) -> None:
        """Let every batch still running end at its next poll (slow batches made quick)."""
        with self._batch_lock:
            for job in self._batches.values():
                job.polls_needed = 1

    def run_open_batches(self) -> None:
        """Run every batch still open now, polled or not, as the real service does with batches
        nobody polls any more (a cancelling one ends cancelled): `batch_lines` then counts
        every line a client would pay for."""
        with self._batch_lock:
            for batch_id, job in self._batches.items():
                if job.record["status"] == "cancelling":
                    job.record.update(status="cancelled", cancelled_at=int(time.time()))
                    self._event("ended", batch_id)
                elif job.record["status"] in ("validating", "in_progress"):
                    self._run_batch(job)
                    self._event("ended", batch_id)

    def batch_status(self, batch_id: str) -> str | None:
        """A batch's status as the server holds it, None for an unknown id."""
        with self._batch_lock:
            job = self._batches.get(batch_id)
            return None if job is None else str(job.record["status"])

    def _event(self, event: str, batch_id: str) -> None:
        with self._lock:
            self.batch_events.append((time.monotonic(), event, batch_id))

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> _Reply | None:
        """Answer one HTTP request; None means drop the connection without a response."""
        path = urlsplit(target).path.rstrip("/")
        is_json = bool(raw) and headers.get("content-type", "").startswith("application/json")
        body: Any = None
        if is_json:
            with suppress(ValueError):
                body = json.loads(raw)
        redacted = {k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, redacted, body, time.monotonic()))
        if self.api_key is not None and not hmac.compare_digest(
            headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()
        ):
            return _error(401)
        if is_json and not isinstance(body, dict):
            return _error(400, "The request body is not a JSON object.")
        request = _Request(path, headers, raw, body or {})
        for route_method, pattern, name in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return cast(Callable[..., _Reply | None], getattr(self, name))(
                    request, *match.groups()
                )
        return _error(404, f"Unknown endpoint: {method} {path}")

    def _chat(self, request: _Request) -> _Reply | None:
        return self._model_call(CHAT_PATH, lambda fault: self._completion(request.body, fault))

    def _embeddings(self, request: _Request) -> _Reply | None:
        return self._model_call(EMBEDDINGS_PATH, lambda _: self._embedding_list(request.body))

    def _model_call(
        self, path: str, answer: Callable[[Fault | None], dict[str, Any]]
    ) -> _Reply | None:
        with self._lock:
            self.calls += 1
            self._in_flight += 1
            over = self.max_in_flight is not None and self._in_flight > self.max_in_flight
            self.refused_calls += over
            if not over:
                self.max_concurrency = max(self.max_concurrency, self._in_flight)
        try:
            if over:
                return _error(429, retry_after=1)
            fault = self._take_fault(path)
            delay = self.latency + (fault.seconds if fault else 0.0)
            if (delay > 0 and self._stopping.wait(delay)) or (fault and fault.kind == "drop"):
                return None
            if fault and fault.kind == "status":
                return _error(fault.status_code, retry_after=fault.retry_after)
            try:
                reply = _json(200, answer(fault))
            except _BadRequest as exc:
                return _error(400, str(exc))
            except Exception as exc:
                return _error(500, f"FakeOpenAI responder failed: {type(exc).__name__}")
            with self._lock:
                self.completed_calls += 1
                self.answered_at.append(time.monotonic())
            return reply
        finally:
            with self._lock:
                self._in_flight -= 1

    def _take_fault(self, path: str) -> Fault | None:
        def fits(fault: Fault, only: str | None) -> bool:
            endpoint_ok = only is None or path.endswith(only)
            return endpoint_ok and (fault.kind not in _CONTENT_FAULTS or path == CHAT_PATH)

        with self._lock:
            for index, (fault, only) in enumerate(self._faults):
                if fits(fault, only):
                    return self._faults.pop(index)[0]
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return self.fault_kind if fits(self.fault_kind, None) else None
        return None

    def _completion(self, body: dict[str, Any], fault: Fault | None = None) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty list.")
        if body.get("stream"):
            raise _BadRequest("FakeOpenAI does not support streaming.")
        if fault and fault.kind == "content":
            content = fault.text
        elif fault and fault.kind == "schema_invalid":
            content = json.dumps(invalid_instance(response_schema(body)))
        else:
            content = self.responder(body)
        prompt = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        prompt_tokens, completion_tokens = count_tokens(prompt), count_tokens(content)
        choice = {"role": "assistant", "content": content, "refusal": None}
        return {
            "id": f"chatcmpl-{next(self._ids):08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.models[0]),
            "choices": [{"index": 0, "message": choice, "finish_reason": "stop", "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _embedding_list(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        if not inputs:
            raise _BadRequest("'input' must be a non-empty string or list.")
        texts = [inputs] if isinstance(inputs, str) else [str(text) for text in inputs]
        dimensions = int(body.get("dimensions") or self.embedding_dim)
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding_vector(text, dimensions)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(count_tokens(text) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", self.models[-1]),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _list_models(self, _: _Request) -> _Reply:
        models = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
        ]
        return _json(200, {"object": "list", "data": models})

    def _upload_file(self, request: _Request) -> _Reply:
        form = _parse_multipart(request.headers.get("content-type", ""), request.raw)
        if "file" not in form:
            return _error(400, "Missing multipart field 'file'.")
        purpose = form.get("purpose", (None, b"batch"))[1].decode()
        filename, content = form["file"]
        return _json(200, self._store_file(filename or "upload.jsonl", purpose, content))

    def _store_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = f"file-{next(self._ids):08d}"
        record = {"id": file_id, "object": "file", "bytes": len(content), "filename": filename}
        record |= {"created_at": int(time.time()), "purpose": purpose, "status": "processed"}
        with self._lock:
            self.files[file_id] = record
            self._contents[file_id] = content
        return record

    def _get_file(self, _: _Request, file_id: str) -> _Reply:
        record = self.files.get(file_id)
        return _json(200, record) if record else _error(404, f"No such file: {file_id}")

    def _file_content(self, _: _Request, file_id: str) -> _Reply:
        content = self._contents.get(file_id)
        if content is None:
            return _error(404, f"No such file: {file_id}")
        return _Reply(200, content, content_type="application/octet-stream")

    def _create_batch(self, request: _Request) -> _Reply:
        body = request.body
        content = self._contents.get(str(body.get("input_file_id")))
        if content is None:
            return _error(400, f"No such input file: {body.get('input_file_id')}")
        now = int(time.time())
        record: dict[str, Any] = {
            "id": f"batch_{next(self._ids):08d}",
            "object": "batch",
            "endpoint": body.get("endpoint", CHAT_PATH),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": now,
            "expires_at": now + 86_400,
            "metadata": body.get("metadata"),
            **dict.fromkeys(["errors", "output_file_id", "error_file_id", "cancelled_at"]),
            **{f"{stamp}_at": None for stamp in _BATCH_STAMPS},
        }
        lines, problems = [], []
        for number, text in enumerate(content.decode().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                lines.append({"custom_id": str(line["custom_id"]), **line})
            except (ValueError, KeyError, TypeError):
                problems.append({"code": "invalid_request", "line": number, "message": "Bad line."})
        record["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
        if problems:
            record |= {"status": "failed", "failed_at": now}
            record["errors"] = {"object": "list", "data": problems}
        polls, failed_ids = max(1, self.batch_polls), frozenset(self.batch_failed_ids)
        job = _BatchJob(record, lines, polls, failed_ids, self.batch_expire_after)
        job.tokens = sum(count_tokens(json.dumps(line.get("body", {}))) for line in lines)
        with self._batch_lock:
            queued = sum(
                other.tokens
                for other in self._batches.values()
                if other.record["status"] in ("validating", "in_progress")
            )
            limit = self.batch_token_limit
            if not problems and limit is not None and queued + job.tokens > limit:
                message = f"Enqueued token limit reached: {queued} of {limit} in use."
                record |= {"status": "failed", "failed_at": now}
                error = {"code": "token_limit_exceeded", "line": None, "message": message}
                record["errors"] = {"object": "list", "data": [error]}
            self._batches[record["id"]] = job
            self.batch_tokens[record["id"]] = job.tokens
        self._event("refused" if record["errors"] else "created", record["id"])
        return _json(200, record)

    def _get_batch(self, _: _Request, batch_id: str) -> _Reply:
        with self._batch_lock:
            job = self._batches.get(batch_id)
            if job is None:
                return _error(404, f"No such batch: {batch_id}")
            record, now = job.record, int(time.time())
            job.polls += 1
            if record["status"] == "cancelling":
                record.update(status="cancelled", cancelled_at=now)
                self._event("ended", batch_id)
            elif record["status"] in ("validating", "in_progress"):
                record["in_progress_at"] = record["in_progress_at"] or now
                record["status"] = "in_progress"
                if job.polls >= job.polls_needed:
                    self._run_batch(job)
                    self._event("ended", batch_id)
            return _json(200, record)

    def _list_batches(self, _: _Request) -> _Reply:
        """Every batch, newest first, in one page."""
        with self._batch_lock:
            data = [job.record for job in reversed(self._batches.values())]
            first = data[0]["id"] if data else None
            last = data[-1]["id"] if data else None
            page = {"object": "list", "data": data, "has_more": False}
            return _json(200, page | {"first_id": first, "last_id": last})

    def _cancel_batch(self, _: _Request, batch_id: str) -> _Reply:
        with self._batch_lock:
            job = self._batches.get(batch_id)
            if job is None:
                return _error(404, f"No such batch: {batch_id}")
            if job.record["status"] in ("validating", "in_progress"):
                job.record.update(status="cancelling", cancelling_at=int(time.time()))
        self._event("cancel", batch_id)
        return _json(200, job.record)

    def _run_batch(self, job: _BatchJob) -> None:
        """Answer every line through the chat responder and write output and error files."""
        record = job.record
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, line in enumerate(job.lines):
            entry = {"id": f"batch_req_{next(self._ids):08d}", "custom_id": line["custom_id"]}
            if job.expire_after is not None and index >= job.expire_after:
                message = "This request could not be executed before the completion window expired."
                error = {"code": "batch_expired", "message": message}
                errors.append({**entry, "response": None, "error": error})
                continue
            status, body = 500, error_body(500)
            with self._lock:
                self.batch_lines += 1
            if line["custom_id"] not in job.failed_ids:
                request, url = line.get("body") or {}, str(line.get("url", ""))
                answer = self._embedding_list if url.endswith("/embeddings") else self._completion
                try:
                    status, body = 200, answer(request)
                except _BadRequest as exc:
                    status, body = 400, error_body(400, str(exc))
                except Exception as exc:
                    body = error_body(500, f"FakeOpenAI responder failed: {type(exc).__name__}")
            response = {"status_code": status, "request_id": f"req_{entry['id']}", "body": body}
            (outputs if status == 200 else errors).append(
                {**entry, "response": response, "error": None}
            )
        now, expired = int(time.time()), job.expire_after is not None
        counts = {"total": len(job.lines), "completed": len(outputs), "failed": len(errors)}
        record |= {"status": "expired" if expired else "completed", "request_counts": counts}
        record |= {"finalizing_at": now, ("expired_at" if expired else "completed_at"): now}
        for kind, entries in (("output", outputs), ("error", errors)):
            if entries:
                jsonl = "".join(json.dumps(entry) + "\n" for entry in entries)
                name = f"{record['id']}_{kind}.jsonl"
                stored = self._store_file(name, "batch_output", jsonl.encode())
                record[f"{kind}_file_id"] = stored["id"]


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("POST", r"/v1/chat/completions", "_chat"),
        ("POST", r"/v1/embeddings", "_embeddings"),
        ("GET", r"/v1/models", "_list_models"),
        ("POST", r"/v1/files", "_upload_file"),
        ("GET", r"/v1/files/([^/]+)", "_get_file"),
        ("GET", r"/v1/files/([^/]+)/content", "_file_content"),
        ("POST", r"/v1/batches", "_create_batch"),
        ("GET", r"/v1/batches", "_list_batches"),
        ("GET", r"/v1/batches/([^/]+)", "_get_batch"),
        ("POST", r"/v1/batches/([^/]+)/cancel", "_cancel_batch"),
    ]
]


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: FakeOpenAI) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are expected
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm meets the
    # client's delayed ACK and every response waits ~40 ms (measured: 44 ms per call at zero
    # latency). Real servers (uvicorn, nginx) set it too.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._respond("GET")

    def do_POST(self) -> None:
        self._respond("POST")

    def _respond(self, method: str) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = self.rfile.read(int(headers.get("content-length") or 0))
        try:
            reply = self.server.app.handle(method, self.path, headers, raw)
        except Exception as exc:
            reply = _error(500, f"FakeOpenAI failed: {type(exc).__name__}")
        if reply is None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        for name, value in {
            "Content-Type": reply.content_type,
            "Content-Length": str(len(reply.body)),
            **reply.headers,
        }.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            super().log_message(format, *args)


def module_server(key: str) -> Any:
    """A module-scoped pytest fixture: one server accepting `key` for a whole test module,
    started once (assign it to the fixture's name: `server = module_server(KEY)`)."""
    import pytest

    @pytest.fixture(scope="module")
    def server() -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=key) as fake:
            yield fake

    return server


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, for manual use and benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each call")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of calls given a 500")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument("--max-in-flight", type=int, default=None, help="429 beyond this many")
    args = parser.parse_args(argv)
    server = FakeOpenAI(
        api_key=args.api_key, latency=args.latency, port=args.port, verbose=not args.quiet
    )
    with server:
        server.fault_rate = args.fault_rate
        server.max_in_flight = args.max_in_flight
        print(f"FakeOpenAI serving at {server.base_url}", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
