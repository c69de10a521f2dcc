"""Batch processing of tabular records: read in chunks, render a prompt per row, call a model
under shared rate limits, validate, write every input row exactly once.

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

Resume: every row that ends `ok` is appended at once to a JSONL journal under
`<batch_dir>/journal/`, keyed on sha256(rendered prompt, system prompt, schema, model,
temperature). A re-run (after a kill, a crash or a changed input) takes finished rows from the
journal and pays only for the rest. The journal is per row, not per task, because a task is a
batch of rows: Prefect's task cache would lose every finished row of a task killed midway.

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
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, SecretStr

from tasks.errors import ConfigurationError, LLMError, UsageError
from tasks.llm import PERMANENT_STATUS, REPAIR_PROMPT, Usage, openai_client
from tasks.redaction import redact
from tasks.reporting import file_mode

if TYPE_CHECKING:
    import jinja2
    import openai
    import pandas as pd
    import pyarrow as pa
    from great_expectations.expectations import Expectation

    from tasks.embeddings import Embedder
    from tasks.quality import QualityReport
    from tasks.settings import ModelPrice, Settings

logger = logging.getLogger(__name__)

RowStatus = Literal["ok", "failed", "invalid_input"]
ROW_STATUSES: tuple[str, ...] = ("ok", "failed", "invalid_input")
RESULT_COLUMNS = ("status", "error", "prompt_tokens", "completion_tokens", "model")
RESERVED_COLUMNS = frozenset({"row_id", *RESULT_COLUMNS})
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TASKS = ("summarize", "classify", "embed")
PROMPT_VERSION = "records-1"
COMPLETION_TOKENS_ESTIMATE = 256
"""Tokens reserved per request for the answer when a tokens/min limit is set; trued up after."""


# ---------------------------------------------------------------------------------------------
# Reading


def record_format(path: Path) -> str:
    """csv, jsonl or parquet, from the file extension."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{path}: unknown table format {path.suffix!r}",
            hint="use .csv, .jsonl (.ndjson) or .parquet",
        )
    return fmt


@dataclass
class Row:
    """One input row: its position, id, values, and the text sent to the engine."""

    number: int
    row_id: str
    values: dict[str, Any]
    text: str = ""
    key: str = ""
    problem: str | None = None


_RawRow = tuple[dict[str, Any], str | None]


class RecordReader:
    """Streams the rows of a CSV, JSONL or Parquet file; never holds the whole file.

    CSV is read with the csv module (not pandas' chunked reader) so a malformed line becomes an
    `invalid_input` row at its own position instead of being skipped or failing the read.
    Invalid UTF-8 is decoded with surrogate escapes and flagged per row. JSONL columns are the
    keys of the first rows (later unknown keys reach the template but not the output).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{self.path}: no such file")
        self.format = record_format(self.path)
        self.arrow_schema: pa.Schema | None = None
        self.columns = self._columns()

    def _columns(self) -> list[str]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                self.arrow_schema = pq.ParquetFile(self.path).schema_arrow
            except Exception as exc:
                raise UsageError(f"{self.path}: not a readable Parquet file: {exc}") from None
            return list(self.arrow_schema.names)
        if self.format == "csv":
            with self._open_text() as handle:
                header = next(csv.reader(handle), None)
            if not header or not any(h.strip() for h in header):
                raise UsageError(f"{self.path}: the file is empty (no header line)")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise UsageError(f"{self.path}: duplicate column names in the header")
            return header
        columns: dict[str, None] = {}
        for values, problem in itertools.islice(self._jsonl_rows(), 1000):
            if problem is None:
                columns.update(dict.fromkeys(values))
        if not columns:
            raise UsageError(f"{self.path}: no JSON object rows found (the file is empty?)")
        return list(columns)

    def estimate_rows(self) -> int:
        """Rows in the file (exact for Parquet, line count otherwise)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        lines = 0
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                lines += block.count(b"\n")
        return max(0, lines - (1 if self.format == "csv" else 0))

    def _open_text(self) -> Any:
        return self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")

    def raw_rows(self) -> Iterator[_RawRow]:
        """Every row as (values, problem); problem is None for a usable row."""
        if self.format == "csv":
            yield from self._csv_rows()
        elif self.format == "jsonl":
            yield from self._jsonl_rows()
        else:
            yield from self._parquet_rows()

    def _csv_rows(self) -> Iterator[_RawRow]:
        width = len(self.columns)
        with self._open_text() as handle:
            reader = csv.reader(handle)
            next(reader, None)
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield {}, f"malformed CSV line {reader.line_num}: {exc}"
                    continue
                if not fields:
                    continue
                values = dict(zip(self.columns, fields, strict=False))
                problem = None
                if len(fields) != width:
                    problem = (
                        f"malformed CSV line {reader.line_num}: expected {width} fields, "
                        f"got {len(fields)}"
                    )
                    values.update({c: "" for c in self.columns[len(fields) :]})
                yield _check_utf8(values, problem)

    def _jsonl_rows(self) -> Iterator[_RawRow]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    yield {}, f"line {number}: invalid UTF-8"
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield {}, f"line {number}: malformed JSON ({exc.msg})"
                    continue
                if not isinstance(value, dict):
                    yield {}, f"line {number}: not a JSON object"
                    continue
                yield value, None

    def _parquet_rows(self) -> Iterator[_RawRow]:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=10_000):
            for values in batch.to_pylist():
                yield values, None


_SURROGATE = re.compile("[\udc80-\udcff]")


def _check_utf8(values: dict[str, Any], problem: str | None) -> _RawRow:
    bad = [k for k, v in values.items() if isinstance(v, str) and _SURROGATE.search(v)]
    if not bad:
        return values, problem
    clean = {k: _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v for k, v in values.items()}
    return clean, problem or f"invalid UTF-8 in column {bad[0]!r}"


def content_hash(values: dict[str, Any]) -> str:
    """A stable id for a row without an id column: sha256 of its content."""
    canonical = json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RowIds:
    """Assigns row ids: the id column's value, or the content hash (`-2`, `-3` for repeats);
    `missing-row-<number>` for a row that could not be read at all.

    Remembers every id of the run (a set of short strings) to catch duplicates across chunks.
    """

    def __init__(self, id_column: str | None) -> None:
        self.id_column = id_column
        self._seen: dict[str, int] = {}

    def assign(
        self, values: dict[str, Any], problem: str | None, number: int
    ) -> tuple[str, str | None]:
        if problem is not None and not values:  # unreadable: nothing to take an id from
            return f"missing-row-{number}", problem
        if self.id_column is None:
            base = content_hash(values)
            count = self._seen.get(base, 0) + 1
            self._seen[base] = count
            return (base if count == 1 else f"{base}-{count}"), problem
        raw = values.get(self.id_column)
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
            return f"missing-{content_hash(values)}", problem or f"empty id in {self.id_column!r}"
        row_id = str(raw).strip()
        if row_id in self._seen:
            return row_id, problem or f"duplicate id {row_id!r} (first at row {self._seen[row_id]})"
        self._seen[row_id] = len(self._seen)
        return row_id, problem


# ---------------------------------------------------------------------------------------------
# What to do with each row


class OutputSchema(BaseModel):
    """The JSON schema results must fit, and the top-level fields they flatten into."""

    name: str
    json_schema: dict[str, Any]
    fields: list[str]
    strict: bool

    def validate_text(self, text: str) -> tuple[Any, list[str]]:
        """Parse and validate a model answer; return the value or readable errors."""
        import jsonschema

        try:
            value = json.loads(_strip_fences(text))
        except ValueError as exc:
            return None, [f"not valid JSON: {exc}"]
        validator = jsonschema.Draft202012Validator(self.json_schema)
        errors = []
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path))[:10]:
            where = ".".join(str(p) for p in error.path) or "(root)"
            errors.append(f"{where}: {error.message[:200]}")
        return (None if errors else value), errors

    def is_valid(self, value: Any) -> bool:
        import jsonschema

        return bool(jsonschema.Draft202012Validator(self.json_schema).is_valid(value))


_FIELD_TYPES: dict[str, Any] = {
    "str": str,
    "string": str,
    "int": int,
    "integer": int,
    "float": float,
    "number": float,
    "bool": bool,
    "boolean": bool,
    "list": list[str],
}


def schema_from_fields(spec: str) -> OutputSchema:
    """'category,priority:int,summary' -> a strict JSON schema (strings unless typed)."""
    from pydantic import create_model

    from tasks.llm import strict_json_schema

    fields: dict[str, Any] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, kind = (p.strip() for p in item.partition(":"))
        if not name.isidentifier():
            raise UsageError(f"--schema: {name!r} is not a valid field name")
        if (kind or "str") not in _FIELD_TYPES:
            raise UsageError(
                f"--schema: unknown type {kind!r} for {name!r}",
                hint="use " + ", ".join(sorted(_FIELD_TYPES)),
            )
        fields[name] = (_FIELD_TYPES[kind or "str"], ...)
    if not fields:
        raise UsageError("--schema: no fields given")
    model = create_model("RecordResult", **fields)
    return OutputSchema(
        name="RecordResult",
        json_schema=strict_json_schema(model),
        fields=list(fields),
        strict=True,
    )


def schema_from_file(path: Path) -> OutputSchema:
    """A JSON Schema file (an object schema) checked up front."""
    import jsonschema

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
    except (OSError, ValueError, jsonschema.SchemaError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise UsageError(f"--schema {path}: not a usable JSON Schema: {message[:200]}") from None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if schema.get("type") != "object" or not isinstance(properties, dict):
        raise UsageError(f"--schema {path}: the schema must be an object with properties")
    strict = schema.get("additionalProperties") is False and set(schema.get("required", [])) == (
        set(properties)
    )
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or path.stem))[:64]
    return OutputSchema(name=name, json_schema=schema, fields=list(properties), strict=strict)


def load_schema(spec: str | None) -> OutputSchema | None:
    """--schema: a JSON Schema file, or a comma-separated field list."""
    if not spec:
        return None
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise UsageError(f"--schema {spec}: no such file")
        return schema_from_file(path)
    return schema_from_fields(spec)


def load_template(spec: str) -> str:
    """--template: a file if one exists at that path, else the template text itself."""
    path = Path(spec)
    with contextlib.suppress(OSError):
        if len(spec) < 1024 and "\n" not in spec and path.is_file():
            return path.read_text(encoding="utf-8")
    return spec


@dataclass
class RecordJob:
    """What to do with every row: a prompt template (with optional schema) or a built-in task."""

    template: str | None = None
    task: str | None = None
    system: str | None = None
    schema: OutputSchema | None = None
    model: str = "gpt-4o-mini"
    temperature: float = 0.2
    labels: list[str] = field(default_factory=list)
    text_column: str = "text"
    id_column: str | None = None
    min_chars: int = 1
    max_chars: int = 100_000
    _compiled: jinja2.Template | None = field(default=None, repr=False)
    variables: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if (self.template is None) == (self.task is None):
            raise UsageError("give either --template or --task")
        if self.task is not None and self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.task == "classify" and len(self.labels) < 2:
            raise UsageError("--task classify needs --labels with at least two labels")
        if self.task is not None and self.schema is not None:
            raise UsageError("--schema applies to --template, not to built-in tasks")
        if self.template is not None:
            self._compiled = compile_template(self.template)
            self.variables = sorted(template_variables(self.template))

    @property
    def key(self) -> str:
        """Identifies everything but the row that decides a result (the resume cache key)."""
        parts = [
            PROMPT_VERSION,
            self.template or "",
            self.task or "",
            self.system or "",
            json.dumps(self.schema.json_schema, sort_keys=True) if self.schema else "",
            self.model,
            repr(self.temperature),
            "\x1f".join(self.labels),
        ]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def row_key(self, text: str) -> str:
        return hashlib.sha256(f"{self.key}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def result_fields(self) -> list[str]:
        if self.task == "summarize":
            return ["summary"]
        if self.task == "classify":
            return ["label", "score"]
        if self.task == "embed":
            return ["embedding"]
        return list(self.schema.fields) if self.schema else ["result"]

    def required_columns(self) -> list[str]:
        """Input columns the job reads (the id column, the template's variables or the text)."""
        needed = [self.id_column] if self.id_column else []
        if self.template is not None:
            needed += self.variables
        elif self.text_column:
            needed.append(self.text_column)
        return list(dict.fromkeys(needed))

    def check_columns(self, columns: list[str], source: str) -> None:
        """Fail up front (a usage error) when the input lacks a column the job needs."""
        missing = [c for c in self.required_columns() if c not in columns]
        if missing:
            what = "the template uses" if self.template is not None else "the job needs"
            raise UsageError(
                f"{source}: {what} column(s) {', '.join(missing)} that the input does not have",
                hint="columns: " + ", ".join(columns[:20]),
            )
        clash = sorted(RESERVED_COLUMNS & set(columns))
        if clash:
            raise UsageError(
                f"{source}: input column(s) {', '.join(clash)} clash with output columns",
                hint="rename them in the input",
            )

    def render(self, values: dict[str, Any]) -> str:
        """The row's text: the rendered template, or the text column."""
        if self._compiled is None:
            value = values.get(self.text_column)
            return "" if value is None else str(value)
        return self._compiled.render({**values, "row": values})


def _environment() -> jinja2.Environment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def compile_template(source: str) -> jinja2.Template:
    """A sandboxed template: no Python objects reachable, unknown names fail loudly."""
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise UsageError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def template_variables(source: str) -> set[str]:
    """Column names a template reads (`row` is the whole row and needs no column)."""
    from jinja2 import meta

    env = _environment()
    return set(meta.find_undeclared_variables(env.parse(source))) - {"row"} - set(env.globals)


def screen_rows(
    job: RecordJob, ids: RowIds, raw: Iterable[tuple[int, dict[str, Any], str | None]]
) -> list[Row]:
    """Give rows their ids and texts; rows that cannot be used get their problem."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    rows = []
    for number, values, problem in raw:
        row_id, problem = ids.assign(values, problem, number)
        row = Row(number=number, row_id=row_id, values=values, problem=problem)
        if row.problem is None:
            try:
                row.text = job.render(values)
            except SecurityError as exc:
                raise UsageError(f"the template is not allowed: {exc}") from None
            except TemplateError as exc:
                row.problem = f"template: {exc}"
            else:
                length = len(row.text.strip())
                if job.template is not None and _all_empty(values, job.variables):
                    length = 0
                if length == 0:
                    row.problem = "empty text: nothing to send"
                elif length < job.min_chars:
                    row.problem = f"text shorter than {job.min_chars} characters"
                elif length > job.max_chars:
                    row.problem = f"text longer than {job.max_chars} characters"
                row.key = job.row_key(row.text)
        rows.append(row)
    return rows


def _all_empty(values: dict[str, Any], columns: list[str]) -> bool:
    used = [values.get(c) for c in columns]
    return bool(used) and all(v is None or str(v).strip() == "" for v in used)


def iter_row_chunks(reader: RecordReader, job: RecordJob, chunk_rows: int) -> Iterator[list[Row]]:
    """The input as screened rows, `chunk_rows` at a time."""
    ids = RowIds(job.id_column)
    chunk: list[tuple[int, dict[str, Any], str | None]] = []
    for number, (values, problem) in enumerate(reader.raw_rows()):
        chunk.append((number, values, problem))
        if len(chunk) >= chunk_rows:
            yield screen_rows(job, ids, chunk)
            chunk = []
    if chunk:
        yield screen_rows(job, ids, chunk)


# ---------------------------------------------------------------------------------------------
# Results


class RowResult(BaseModel):
    """The end of one row."""

    number: int
    row_id: str
    status: RowStatus
    result: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    calls: int = 0
    cost_usd: float = 0.0
    reused: bool = False
    """Taken from the journal or the previous output."""
    record: dict[str, Any] | None = None
    """A previous output record kept as it was (--retry-failed)."""


def invalid_result(row: Row) -> RowResult:
    return RowResult(
        number=row.number, row_id=row.row_id, status="invalid_input", error=row.problem
    )


def failed_result(row: Row, reason: str, usage: Usage | None = None, model: str = "") -> RowResult:
    usage = usage or Usage()
    return RowResult(
        number=row.number,
        row_id=row.row_id,
        status="failed",
        error=reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        calls=usage.calls,
        cost_usd=usage.cost_usd,
        model=model or None,
    )


def ok_result(row: Row, value: Any, usage: Usage, model: str) -> RowResult:
    return RowResult(
        number=row.number,
        row_id=row.row_id,
        status="ok",
        result=value,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        calls=usage.calls,
        cost_usd=usage.cost_usd,
        model=model,
    )


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LLMError | UsageError) else f"{type(exc).__name__}: {exc}"


class RowJournal:
    """Append-only JSONL of rows that ended `ok`, keyed on `RecordJob.row_key`.

    One file per job key under `<batch_dir>/journal/`; loaded once (a dict of finished rows),
    appended and flushed per row so a killed run loses at most the rows in flight. A torn last
    line is ignored on load. One writer per job at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._done: dict[str, dict[str, Any]] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entry = json.loads(line)
                        self._done[entry["key"]] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    @classmethod
    def for_job(cls, batch_dir: Path, job: RecordJob) -> RowJournal:
        return cls(batch_dir / "journal" / f"{job.key[:24]}.jsonl")

    def __len__(self) -> int:
        return len(self._done)

    def get(self, row: Row) -> RowResult | None:
        entry = self._done.get(row.key)
        if entry is None:
            return None
        return RowResult(
            number=row.number,
            row_id=row.row_id,
            status="ok",
            result=entry.get("result"),
            prompt_tokens=entry.get("prompt_tokens", 0),
            completion_tokens=entry.get("completion_tokens", 0),
            model=entry.get("model"),
            reused=True,
        )

    def add(self, row: Row, result: RowResult) -> None:
        if result.status != "ok" or not row.key:
            return
        entry = {
            "key": row.key,
            "result": result.result,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "model": result.model,
        }
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self._done[row.key] = entry
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


# ---------------------------------------------------------------------------------------------
# Rate limiting


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


def _retry_after(response: Any) -> float | None:
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


# ---------------------------------------------------------------------------------------------
# Engines


RowCallback = Callable[[Row, RowResult], None]


@runtime_checkable
class RowEngine(Protocol):
    """Turns usable rows into results; calls `on_done` as each row finishes."""

    name: str
    model: str
    journaled: bool

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]: ...


def build_messages(job: RecordJob, text: str, *, describe_schema: bool = False) -> list[Any]:
    system = job.system or ""
    if job.schema is not None and describe_schema:
        system += "\nAnswer with only a JSON object that fits this JSON schema:\n" + json.dumps(
            job.schema.json_schema, separators=(",", ":")
        )
    messages: list[Any] = [{"role": "system", "content": system.strip()}] if system.strip() else []
    return [*messages, {"role": "user", "content": text}]


def response_format(job: RecordJob, use_json_schema: bool) -> dict[str, Any] | None:
    if job.schema is None:
        return None
    if not use_json_schema:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": job.schema.name,
            "schema": job.schema.json_schema,
            "strict": job.schema.strict,
        },
    }


def check_answer(job: RecordJob, text: str, finish_reason: str | None) -> tuple[Any, list[str]]:
    """The result value of an answer, or why it cannot be used."""
    if job.schema is None:
        return (text.strip(), []) if text.strip() else (None, ["the answer was empty"])
    value, errors = job.schema.validate_text(text)
    if errors and finish_reason == "length":
        errors.append("the answer was cut off at the output token limit: be more concise")
    return value, errors


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


def _cost(price: ModelPrice | None, prompt: int, completion: int, factor: float = 1.0) -> float:
    if price is None:
        return 0.0
    return round((prompt * price.input + completion * price.output) * factor / 1e6, 8)


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
            return failed_result(row, _reason(exc), usage, model)
        except Exception as exc:
            return failed_result(row, self._clean(_reason(exc)), usage, model)
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
                        wait = _retry_after(exc.response)
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
            cost_usd=_cost(self.price, prompt, completion),
        )
        return text, choice.get("finish_reason"), usage, reply.get("model") or self.model

    def _clean(self, message: str) -> str:
        return redact(message, *self._secrets)[:300]


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.5 s doubling, capped at 8 s."""
    return random.uniform(0.5, 1.0) * min(0.5 * 2 ** (attempt - 1), 8.0)


class BatchAPIEngine:
    """OpenAI Batch API: one batch job per row batch, failed or expired lines resubmitted.

    Each round writes the pending requests as JSONL under `workdir`, uploads it
    (purpose=batch), creates the batch, polls until it ends, then maps the output and error
    files back to rows by custom_id. Lines that failed, expired, went missing or answered
    outside the schema (resubmitted with a repair prompt) go into the next round, at most
    `rounds` rounds. Control calls keep the SDK's own retries. Cost: half the online price.
    """

    name = "batch-api"
    journaled = True
    PRICE_FACTOR = 0.5

    def __init__(
        self,
        client: openai.OpenAI,
        job: RecordJob,
        workdir: Path,
        *,
        price: ModelPrice | None = None,
        rounds: int = 3,
        poll_interval_s: float = 10.0,
        timeout_s: float = 86_400.0,
        use_json_schema: bool = True,
        on_poll: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.model = job.model
        self.workdir = workdir
        self.price = price
        self.rounds = rounds
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.use_json_schema = use_json_schema
        self.on_poll = on_poll
        self.batches: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings, job: RecordJob, **options: Any) -> BatchAPIEngine:

        if settings.llm_engine != "openai":
            raise ConfigurationError(
                "--mode batch-api needs an OpenAI-compatible endpoint with the Batch API",
                hint="set OPENAI_API_KEY (and OPENAI_BASE_URL)",
            )
        client = openai_client(settings)
        return cls(
            client,
            job,
            settings.batch_dir / "requests",
            price=settings.price_of(job.model),
            use_json_schema=settings.llm_json_schema,
            **options,
        )

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        results: dict[int, RowResult] = {}
        messages = {
            row.number: build_messages(self.job, row.text, describe_schema=not self.use_json_schema)
            for row in rows
        }
        usage = {row.number: Usage() for row in rows}
        reasons = {row.number: "not submitted" for row in rows}
        pending = list(rows)
        for round_number in range(1, self.rounds + 1):
            if not pending:
                break
            answers, errors = self._run_round(pending, messages, round_number)
            still: list[Row] = []
            for row in pending:
                custom_id = f"row-{row.number}"
                if custom_id in answers:
                    text, finish, call_usage, model = answers[custom_id]
                    usage[row.number] = usage[row.number] + call_usage
                    value, problems = check_answer(self.job, text, finish)
                    if not problems:
                        results[row.number] = ok_result(row, value, usage[row.number], model)
                        on_done(row, results[row.number])
                        continue
                    reasons[row.number] = "output did not fit the schema: " + "; ".join(
                        problems[:3]
                    )
                    repair = REPAIR_PROMPT.format(errors="; ".join(problems))
                    messages[row.number] = [
                        *messages[row.number][:2],
                        {"role": "assistant", "content": text[:4000]},
                        {"role": "user", "content": repair},
                    ]
                else:
                    reasons[row.number] = errors.get(custom_id, "missing from the batch output")
                still.append(row)
            pending = still
        for row in pending:
            reason = f"batch API: {reasons[row.number]} (after {self.rounds} rounds)"
            results[row.number] = failed_result(row, reason, usage[row.number], self.model)
            on_done(row, results[row.number])
        return [results[row.number] for row in rows]

    def _run_round(
        self, rows: list[Row], messages: dict[int, list[Any]], round_number: int
    ) -> tuple[dict[str, tuple[str, str | None, Usage, str]], dict[str, str]]:
        fmt = response_format(self.job, self.use_json_schema)
        lines = []
        for row in rows:
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages[row.number],
                "temperature": self.job.temperature,
            }
            if fmt is not None:
                body["response_format"] = fmt
            request: dict[str, Any] = {"custom_id": f"row-{row.number}", "method": "POST"}
            request |= {"url": "/v1/chat/completions", "body": body}
            lines.append(json.dumps(request, ensure_ascii=False))
        name = f"{self.job.key[:12]}-rows-{rows[0].number}-{rows[-1].number}-r{round_number}.jsonl"
        path = self.workdir / name
        _write_text_atomically(path, "\n".join(lines) + "\n")
        with path.open("rb") as handle:
            uploaded = self.client.files.create(file=(name, handle), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"source": "gristmill", "round": str(round_number)},
        )
        self.batches.append(batch.id)
        batch = self._wait(batch.id)
        answers: dict[str, tuple[str, str | None, Usage, str]] = {}
        errors: dict[str, str] = {}
        if batch.status not in ("completed", "expired"):
            detail = ""
            if batch.errors and batch.errors.data:
                detail = ": " + "; ".join(str(e.message) for e in batch.errors.data[:3])
            reason = f"batch {batch.id} ended {batch.status}{detail}"
            return answers, dict.fromkeys((f"row-{r.number}" for r in rows), reason)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = self.client.files.content(file_id).text
            for line in content.splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self._map_line(json.loads(line), answers, errors)
        return answers, errors

    def _map_line(
        self,
        entry: dict[str, Any],
        answers: dict[str, tuple[str, str | None, Usage, str]],
        errors: dict[str, str],
    ) -> None:
        custom_id = str(entry["custom_id"])
        response = entry.get("response") or {}
        body = response.get("body") or {}
        if entry.get("error") or response.get("status_code") != 200:
            error = entry.get("error") or body.get("error") or {}
            code = error.get("code") or f"HTTP {response.get('status_code')}"
            errors[custom_id] = f"{code}: {error.get('message', '')}".strip(": ")[:300]
            return
        choice = body["choices"][0]
        usage_body = body.get("usage") or {}
        prompt = int(usage_body.get("prompt_tokens", 0))
        completion = int(usage_body.get("completion_tokens", 0))
        usage = Usage(
            calls=1,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=_cost(self.price, prompt, completion, self.PRICE_FACTOR),
        )
        text = (choice.get("message") or {}).get("content") or ""
        answers[custom_id] = (text, choice.get("finish_reason"), usage, body.get("model", ""))

    def _wait(self, batch_id: str) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while True:
            batch = self.client.batches.retrieve(batch_id)
            counts = batch.request_counts.model_dump() if batch.request_counts else {}
            if self.on_poll is not None:
                self.on_poll(batch.status, counts)
            logger.info("batch %s: %s %s", batch_id, batch.status, counts)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            if time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    self.client.batches.cancel(batch_id)
                raise LLMError(f"batch {batch_id} did not finish in {self.timeout_s:.0f} s")
            time.sleep(self.poll_interval_s)


class OfflineRowEngine:
    """The built-in tasks without an LLM: extractive summary, zero-shot classify, embed."""

    journaled = False

    def __init__(self, job: RecordJob, embedder: Embedder | None = None) -> None:
        if job.task is None:
            raise ConfigurationError(
                "a prompt template needs an LLM endpoint, and none is configured",
                hint="set OPENAI_API_KEY (and OPENAI_BASE_URL for a local server such as "
                "vLLM or Ollama), or use an offline --task summarize|classify|embed",
            )
        if job.task != "summarize" and embedder is None:
            raise ConfigurationError(f"--task {job.task} needs an embedder")
        self.job = job
        self.embedder = embedder
        if job.task == "summarize":
            from tasks.summaries.engines.extractive.engine import ENGINE, MODEL

            self.name, self.model = ENGINE, MODEL
        else:
            assert embedder is not None
            self.name, self.model = "offline-embedding", embedder.name
        self._labels: Any = None
        self._lock = threading.Lock()

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        try:
            values = self._values([row.text for row in rows])
        except Exception as exc:
            results = [failed_result(row, _reason(exc)) for row in rows]
        else:
            results = [
                ok_result(row, v, Usage(), self.model) for row, v in zip(rows, values, strict=True)
            ]
        for row, result in zip(rows, results, strict=True):
            on_done(row, result)
        return results

    def _values(self, texts: list[str]) -> list[dict[str, Any]]:
        import numpy as np

        if self.job.task == "summarize":
            from tasks.summaries.engines.extractive.engine import summarize_utterances
            from tasks.transcripts import Utterance

            return [
                {
                    "summary": summarize_utterances(
                        [Utterance(index=0, text=t, start=None, end=None)]
                    ).summary
                }
                for t in texts
            ]
        assert self.embedder is not None
        vectors = self.embedder.embed(texts)
        if self.job.task == "embed":
            return [{"embedding": [round(float(x), 6) for x in v]} for v in vectors]
        with self._lock:
            if self._labels is None:
                self._labels = _unit(self.embedder.embed(list(self.job.labels)))
        scores = _unit(vectors) @ self._labels.T
        best = np.argmax(scores, axis=1)
        return [
            {"label": self.job.labels[int(b)], "score": round(float(scores[i, b]), 4)}
            for i, b in enumerate(best)
        ]


def _unit(vectors: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def run_row_batch(
    rows: list[Row], engine: RowEngine, journal: RowJournal | None
) -> list[RowResult]:
    """Results for a batch of usable rows: journal hits reused, the rest sent to the engine."""
    results: dict[int, RowResult] = {}
    todo: list[Row] = []
    for row in rows:
        hit = journal.get(row) if journal is not None else None
        if hit is not None:
            results[row.number] = hit
        else:
            todo.append(row)

    def done(row: Row, result: RowResult) -> None:
        if journal is not None:
            journal.add(row, result)

    if todo:
        try:
            for result in engine.process(todo, done):
                results[result.number] = result
        except Exception as exc:
            for row in todo:
                results.setdefault(row.number, failed_result(row, _reason(exc)))
    return [results[row.number] for row in rows]


@task(task_run_name="{name}", cache_policy=NO_CACHE)
def process_row_batch(
    rows: list[Row], engine: RowEngine, journal: RowJournal | None, name: str
) -> list[RowResult]:
    """One batch of rows through the engine (resumable per row through the journal)."""
    return run_row_batch(rows, engine, journal)


# ---------------------------------------------------------------------------------------------
# Writing


def _cell_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def output_record(row: Row, result: RowResult, job: RecordJob, columns: list[str]) -> dict:
    """Input columns, row_id, flattened result fields, status, error, tokens, model."""
    if result.record is not None:
        return result.record
    record: dict[str, Any] = {c: row.values.get(c) for c in columns}
    record["row_id"] = row.row_id
    fields = job.result_fields
    value = result.result if result.status == "ok" else None
    for name in fields:
        column = output_field_name(name, columns)
        if fields == ["result"] and not isinstance(value, dict):
            record[column] = value
        else:
            record[column] = value.get(name) if isinstance(value, dict) else None
    record |= {
        "status": result.status,
        "error": result.error,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "model": result.model,
    }
    return record


def output_field_name(name: str, input_columns: list[str]) -> str:
    return f"result_{name}" if name in input_columns or name in RESERVED_COLUMNS else name


def output_columns(job: RecordJob, input_columns: list[str]) -> list[str]:
    fields = [output_field_name(f, input_columns) for f in job.result_fields]
    return [*input_columns, "row_id", *fields, *RESULT_COLUMNS]


def dead_letter_path(output: Path) -> Path:
    """Failed and invalid rows with their reasons, next to the output."""
    return output.with_name(f"{output.stem}.dead-letter.jsonl")


def _write_text_atomically(path: Path, text: str) -> None:
    from tasks.reporting import write_atomically

    write_atomically(path, text)


class RecordWriter:
    """Writes output records chunk by chunk to a temporary file, renamed into place at the end.

    CSV cells are text (lists and objects as JSON); JSONL keeps JSON types; Parquet keeps the
    input's Arrow types for input columns, int64 tokens, float64 scores, list<float> embeddings
    and text (JSON for structured values) for everything else. The dead-letter JSONL is
    written the same way. A reader sees the old output or the new one, never half of one.
    """

    def __init__(
        self,
        path: Path,
        columns: list[str],
        *,
        input_schema: pa.Schema | None = None,
    ) -> None:
        self.path = path
        self.format = record_format(path)
        self.columns = columns
        self.rows = 0
        self.dead_letters = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._temp(path)
        self._dead_path = dead_letter_path(path)
        self._dead_tmp = self._temp(self._dead_path)
        self._dead = self._dead_tmp.open("w", encoding="utf-8")
        self._handle: Any = None
        self._csv: Any = None
        self._parquet: Any = None
        self._schema = self._arrow_schema(input_schema) if self.format == "parquet" else None
        if self.format == "csv":
            self._handle = self._tmp.open("w", encoding="utf-8", newline="")
            self._csv = csv.writer(self._handle)
            self._csv.writerow(columns)
        elif self.format == "jsonl":
            self._handle = self._tmp.open("w", encoding="utf-8")

    @staticmethod
    def _temp(path: Path) -> Path:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(name, file_mode())  # outputs honour the umask like any other tool's
        return Path(name)

    def _arrow_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        import pyarrow as pa

        types: dict[str, pa.DataType] = {
            "prompt_tokens": pa.int64(),
            "completion_tokens": pa.int64(),
            "score": pa.float64(),
            "embedding": pa.list_(pa.float32()),
        }
        if input_schema is not None:
            types |= {f.name: f.type for f in input_schema}
        return pa.schema([(c, types.get(c, pa.string())) for c in self.columns])

    def write(self, records: list[dict[str, Any]], dead: list[dict[str, Any]]) -> None:
        for entry in dead:
            self._dead.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self.dead_letters += len(dead)
        self.rows += len(records)
        if self.format == "csv":
            for record in records:
                self._csv.writerow([_safe(_cell_text(record.get(c))) for c in self.columns])
        elif self.format == "jsonl":
            for record in records:
                line = {c: record.get(c) for c in self.columns}
                self._handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        else:
            self._write_parquet(records)

    def _write_parquet(self, records: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert self._schema is not None
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        columns = {}
        for name, kind in zip(self._schema.names, self._schema.types, strict=True):
            values = [record.get(name) for record in records]
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                values = [_cell_text(v) for v in values]
            elif pa.types.is_integer(kind):
                values = [None if v in (None, "") else int(v) for v in values]
            elif pa.types.is_floating(kind):
                values = [None if v in (None, "") else float(v) for v in values]
            elif pa.types.is_list(kind):
                values = [json.loads(v) if isinstance(v, str) else v for v in values]
            columns[name] = pa.array(values, type=kind)
        self._parquet.write_table(pa.table(columns, schema=self._schema))

    def commit(self) -> None:
        """Close both files and move them into place (no dead-letter file when none failed)."""
        self._close()
        if self.format == "parquet" and self._parquet is None:
            self._write_parquet([])
            assert self._parquet is not None
            self._parquet.close()
        os.replace(self._tmp, self.path)
        if self.dead_letters:
            os.replace(self._dead_tmp, self._dead_path)
        else:
            self._dead_tmp.unlink(missing_ok=True)
            self._dead_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)
        self._dead_tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._parquet is not None:
            self._parquet.close()
        self._dead.close()


def _safe(text: str | None) -> str:
    """CSV text that encodes as UTF-8 (lone surrogates from invalid input replaced)."""
    if text is None:
        return ""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def dead_letter_entry(row: Row, result: RowResult) -> dict[str, Any]:
    return {
        "row_number": row.number,
        "row_id": row.row_id,
        "status": result.status,
        "error": result.error,
        "values": {k: _safe(_cell_text(v)) for k, v in row.values.items()},
    }


class PreviousOutput:
    """The rows of an earlier output, read in lockstep with the input (--retry-failed).

    Output rows are in input order, one per input row, so the i-th output row belongs to the
    i-th input row: nothing is held in memory beyond the current row. Rows that ended `ok`
    are kept as they were; the others are processed again. An `invalid_input` row may come back
    with another id: the user fixed it.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UsageError(f"--retry-failed: {path} does not exist yet", hint="run without it")
        reader = RecordReader(path)
        missing = {"row_id", "status"} - set(reader.columns)
        if missing:
            raise UsageError(f"--retry-failed: {path} is not a gristmill batch output")
        self.path = path
        self._rows = (values for values, _ in reader.raw_rows())

    def take(self, row: Row) -> RowResult | None:
        """The kept result for `row`, or None when it needs processing again."""
        previous = next(self._rows, None)
        if previous is None:
            raise UsageError(f"--retry-failed: {self.path} has fewer rows than the input")
        if str(previous.get("row_id")) != row.row_id and previous.get("status") != "invalid_input":
            raise UsageError(
                f"--retry-failed: row {row.number} of {self.path} has id "
                f"{previous.get('row_id')!r}, the input has {row.row_id!r}",
                hint="use the same input and --id-column as the first run",
            )
        if previous.get("status") != "ok":
            return None
        return RowResult(
            number=row.number,
            row_id=row.row_id,
            status="ok",
            model=previous.get("model"),
            reused=True,
            record=previous,
        )


# ---------------------------------------------------------------------------------------------
# Quality gates and the report


def input_quality_frame(rows: list[Row], job: RecordJob) -> pd.DataFrame:
    """The table the input suite checks: required columns, row ids and text lengths."""
    import pandas as pd

    data: dict[str, list[Any]] = {
        c: [_cell_text(r.values.get(c)) for r in rows] for c in job.required_columns()
    }
    data["row_id"] = [None if r.row_id.startswith("missing-") else r.row_id for r in rows]
    data["text_chars"] = [len(r.text.strip()) for r in rows]
    return pd.DataFrame(data)


def check_input_rows(rows: list[Row], job: RecordJob) -> QualityReport:
    """The input suite on one chunk (rows that fail it are already `invalid_input`)."""
    from tasks.quality import record_input_expectations, validate_table

    expectations = record_input_expectations(job.required_columns(), job.min_chars, job.max_chars)
    return validate_table(input_quality_frame(rows, job), "record-input", expectations)


@dataclass
class OutputLedger:
    """One narrow line per written row, for the output suite (every input row exactly once)."""

    numbers: list[int] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)

    def add(self, result: RowResult, job: RecordJob) -> None:
        self.numbers.append(result.number)
        self.row_ids.append(result.row_id)
        self.statuses.append(result.status)
        ok_valid = True
        if result.status == "ok" and result.record is None and job.schema is not None:
            ok_valid = job.schema.is_valid(result.result)
        self.valid.append(ok_valid)

    def check(self, input_rows: int) -> QualityReport:
        import pandas as pd

        from tasks.quality import record_output_expectations, validate_table

        frame = pd.DataFrame(
            {
                "row_number": self.numbers,
                "row_id": self.row_ids,
                "status": self.statuses,
                "result_valid": self.valid,
            }
        )
        return validate_table(
            frame, "record-output", record_output_expectations(input_rows, list(ROW_STATUSES))
        )


def load_expectation_suite(path: Path, option: str = "--expectations") -> list[Expectation]:
    """A GX ExpectationSuite JSON file (as `suite.to_json_dict()` writes it)."""
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        configs = data["expectations"] if isinstance(data, dict) else data
        keep = ("type", "kwargs", "meta", "severity")
        return [
            ExpectationConfiguration(**{k: v for k, v in c.items() if k in keep}).to_domain_obj()
            for c in configs
        ]
    except Exception as exc:
        raise UsageError(f"{option} {path}: not a GX expectation suite: {exc}") from None


def check_input_records(
    rows: list[Row], expectations: list[Expectation]
) -> tuple[QualityReport, dict[int, str]]:
    """The user's input suite (--input-expectations) on one chunk of rows, before any LLM call.

    Returns the verdict and, by row number, why a row is `invalid_input`: each row a failed
    critical column expectation names, or every row of the chunk when a critical expectation
    fails on the table as a whole (a missing column, a row count) and so names no row.
    """
    import pandas as pd

    from tasks.quality import validate_table

    frame = pd.DataFrame([row.values for row in rows])
    report = validate_table(
        frame, "user-input-expectations", expectations, result_format="COMPLETE"
    )
    reasons: dict[int, list[str]] = {}
    for outcome in report.errors:
        where = f" on {outcome.column}" if outcome.column else ""
        if outcome.unexpected_rows:
            positions = [p for p in outcome.unexpected_rows if 0 <= p < len(rows)]
            reason = f"{outcome.expectation}{where}"
        else:
            positions = list(range(len(rows)))
            reason = f"whole chunk: {outcome.describe()}"
        for position in positions:
            reasons.setdefault(rows[position].number, []).append(reason)
    flagged = {number: "input suite: " + "; ".join(found) for number, found in reasons.items()}
    return report, flagged


def check_output_records(
    records: list[dict[str, Any]], expectations: list[Expectation]
) -> QualityReport:
    """The user's suite (--expectations) on one chunk of output records."""
    import pandas as pd

    from tasks.quality import validate_table

    return validate_table(pd.DataFrame(records), "user-expectations", expectations)


class BatchReport(BaseModel):
    """The machine-readable report of one `process_records` run."""

    input: str
    output: str
    dead_letter: str | None = None
    mode: str
    engine: str
    model: str
    rows: int
    ok: int
    failed: int
    invalid_input: int
    reused: int = 0
    """ok rows taken from the journal or the previous output."""
    llm_calls: int
    usage: Usage
    duration_s: float
    rows_per_s: float
    rate_limit_pauses: int = 0
    paused_s: float = 0.0
    quality: list[str] = Field(default_factory=list)
    quality_errors: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    """The first failure reasons."""
    flow_run_id: str | None = None

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.invalid_input == 0 and not self.quality_errors

    def headline(self) -> str:
        return (
            f"{self.rows} rows: {self.ok} ok ({self.reused} reused), {self.failed} failed, "
            f"{self.invalid_input} invalid input"
        )


def batch_report_markdown(report: BatchReport) -> str:
    """The run report as Markdown for the Prefect UI."""
    usage = report.usage
    lines = [
        "# Batch records",
        "",
        f"**{report.headline()}** in {report.duration_s:.1f} s ({report.rows_per_s:.1f} rows/s)",
        "",
        f"`{report.input}` -> `{report.output}` · mode `{report.mode}` · engine "
        f"`{report.engine}` · model `{report.model}`",
        "",
        "| Rows | ok | failed | invalid input | reused | LLM calls | prompt tokens "
        "| completion tokens | est. cost (USD) | 429 pauses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {report.rows} | {report.ok} | {report.failed} | {report.invalid_input} "
        f"| {report.reused} | {report.llm_calls} | {usage.prompt_tokens} "
        f"| {usage.completion_tokens} | {usage.cost_usd:.4f} "
        f"| {report.rate_limit_pauses} ({report.paused_s:.1f} s) |",
        "",
        "## Data quality",
        "",
        *[f"- {line}" for line in report.quality],
        *[f"- **{line}**" for line in report.quality_errors],
    ]
    if report.failures:
        lines += ["", "## First failures", "", *[f"- {f}" for f in report.failures]]
    if report.dead_letter:
        lines += ["", f"Failed rows with reasons: `{report.dead_letter}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Set-up


def preflight(path: Path, job: RecordJob, *, sample_rows: int = 100) -> RecordReader:
    """Open the input and fail fast (a usage error) on what would fail every row.

    Checks the columns the job needs and renders the template on the first rows, so a
    template that tries to leave the sandbox stops the run before any model call.
    """
    reader = RecordReader(path)
    job.check_columns(reader.columns, str(path))
    sample = itertools.islice(reader.raw_rows(), sample_rows)
    screen_rows(job, RowIds(job.id_column), ((n, v, p) for n, (v, p) in enumerate(sample)))
    return reader


def build_row_engine(
    settings: Settings,
    job: RecordJob,
    mode: str = "online",
    *,
    embedder: Embedder | None = None,
    poll_interval_s: float = 10.0,
) -> RowEngine:
    """The engine for a job: offline for built-in tasks, else the online or Batch API path."""
    if mode not in ("online", "batch-api"):
        raise UsageError(f"--mode must be online or batch-api, not {mode!r}")
    if job.task is not None:
        if mode == "batch-api":
            raise UsageError("--mode batch-api applies to --template, not to built-in tasks")
        if job.task != "summarize" and embedder is None:
            from tasks.embeddings import build_embedder

            embedder = build_embedder(settings)
        return OfflineRowEngine(job, embedder)
    if mode == "batch-api":
        return BatchAPIEngine.from_settings(settings, job, poll_interval_s=poll_interval_s)
    return ChatRowEngine.from_settings(settings, job)


def row_batches(rows: list[Row], size: int) -> list[list[Row]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]
