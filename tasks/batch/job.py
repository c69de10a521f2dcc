"""What to do with every row: the prompt template or built-in task, the output schema, the
messages sent for a row and how its answer is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tasks.errors import UsageError
from tasks.llm import response_format, strict_json_schema, strip_fences

if TYPE_CHECKING:
    import jinja2


TASKS = ("summarize", "classify", "embed")
PROMPT_VERSION = "records-1"
RESULT_COLUMNS = ("status", "error", "prompt_tokens", "completion_tokens", "model")
RESERVED_COLUMNS = frozenset({"row_id", *RESULT_COLUMNS})


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
            value = json.loads(strip_fences(text))
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

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Dask worker) with its template's text; compiled again there."""
        return {**self.__dict__, "_compiled": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.template is not None:
            self._compiled = compile_template(self.template)

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

    def messages(self, text: str, *, describe_schema: bool = False) -> list[Any]:
        """The chat messages for a row's text (the schema described in the system prompt for
        servers without structured outputs)."""
        system = self.system or ""
        if self.schema is not None and describe_schema:
            system += "\nAnswer with only a JSON object that fits this JSON schema:\n" + json.dumps(
                self.schema.json_schema, separators=(",", ":")
            )
        messages: list[Any] = (
            [{"role": "system", "content": system.strip()}] if system.strip() else []
        )
        return [*messages, {"role": "user", "content": text}]

    def response_format(self, use_json_schema: bool) -> dict[str, Any] | None:
        if self.schema is None:
            return None
        return response_format(
            self.schema.json_schema,
            self.schema.name,
            strict=self.schema.strict,
            use_json_schema=use_json_schema,
        )

    def read_answer(self, text: str) -> tuple[Any, list[str]]:
        """The result value of an answer (schema-checked JSON, or the text), or why not."""
        if self.schema is None:
            return (text.strip(), []) if text.strip() else (None, ["the answer was empty"])
        return self.schema.validate_text(text)


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
