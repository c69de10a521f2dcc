"""`gristmill query`: one search, or with `--queries FILE.jsonl` many in one process (for
evaluations and bulk lookups), the model and the store loaded once (`tasks.search`).

A queries file holds one JSON object a line, `{"id", "text", "k"?, "where"?, "collection"?}`
(blank lines are skipped). Out: one JSON line a query, in order, `{"id", "hits": [...]}` with
the fields `gristmill query --json` prints, or `{"id", "error": "..."}` for a line that cannot
be run; the others still run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.console import EXIT_ITEMS_FAILED, EXIT_OK, fail
from pipelines.terminal_reports import print_hits

if TYPE_CHECKING:
    from tasks.search import DocumentSearch
    from tasks.settings import Settings

MAX_K = 100


class QueryLine(BaseModel):
    """One line of a queries file."""

    model_config = ConfigDict(extra="forbid")

    id: str | int
    text: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=MAX_K)
    where: dict[str, Any] | None = None
    collection: str | None = None


def _error(query_id: Any, number: int, message: str) -> dict[str, Any]:
    return {"id": query_id, "error": f"line {number}: {message}"}


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return f"{field}: {first['msg']}" if field else first["msg"]


def run_query_line(
    search: DocumentSearch,
    line: str,
    number: int,
    k: int,
    where: dict[str, Any] | None,
    collection: str | None,
) -> dict[str, Any]:
    """The output record for one input line: its hits, or an error in words."""
    from tasks.errors import GristmillError
    from tasks.search import hit_record

    try:
        raw = json.loads(line)
    except ValueError as exc:
        return _error(None, number, f"not JSON ({exc})")
    query_id = raw.get("id") if isinstance(raw, dict) else None
    try:
        query = QueryLine.model_validate(raw)
    except ValidationError as exc:
        return _error(query_id, number, _invalid(exc))
    try:
        hits = search.query(
            query.text,
            query.k or k,
            query.where if query.where is not None else where,
            query.collection or collection,
        )
    except GristmillError as exc:
        return _error(query.id, number, str(exc))
    except ValueError as exc:  # chromadb rejects a malformed filter
        return _error(query.id, number, f"cannot query: {exc}")
    return {"id": query.id, "hits": [hit_record(hit) for hit in hits]}


def run_queries(
    search: DocumentSearch,
    lines: Iterable[str],
    write: Callable[[str], None],
    *,
    k: int = 5,
    where: dict[str, Any] | None = None,
    collection: str | None = None,
) -> int:
    """Run every line and write one JSON line for each; returns how many failed."""
    failed = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = run_query_line(search, line, number, k, where, collection)
        failed += "error" in record
        write(json.dumps(record, ensure_ascii=False, default=str))
    return failed


def query_command(
    settings: Settings,
    text: str | None,
    queries: Path | None,
    k: int,
    where: list[str],
    as_json: bool,
) -> None:
    """The body of `gristmill query`: exits 0, or 1 when a line of a queries file failed."""
    if text is None and queries is None:
        fail("give the TEXT to search for, or --queries FILE")
    if text is not None and queries is not None:
        fail("give the TEXT to search for or --queries FILE, not both")
    filters = parse_where(where)
    from tasks.errors import GristmillError
    from tasks.search import DocumentSearch  # no Prefect for a search

    if queries is not None and str(queries) != "-" and not queries.is_file():
        fail(f"cannot read --queries {queries}: no such file")  # before any thread starts
    search: DocumentSearch | None = None
    try:
        search = DocumentSearch(settings)
        search.preload()
        if queries is not None:
            if str(queries) == "-":
                failed = run_queries(search, sys.stdin, typer.echo, k=k, where=filters)
            else:
                with queries.open(encoding="utf-8") as lines:
                    failed = run_queries(search, lines, typer.echo, k=k, where=filters)
            raise typer.Exit(EXIT_ITEMS_FAILED if failed else EXIT_OK)
        assert text is not None
        hits = search.query(text, k, filters)
    except GristmillError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        fail(f"cannot read --queries {queries}: {exc.strerror or exc}")
    except ValueError as exc:  # chromadb rejects a malformed filter
        fail(f"cannot query: {exc}")
    finally:
        if search is not None:  # whichever way it ends: no exit while the model is half loaded
            search.settle()
    print_hits(hits, text, settings.collection, as_json)


def parse_where(pairs: list[str]) -> dict[str, Any] | None:
    """`KEY=VALUE` filters as a Chroma `where`; numbers and true/false keep their type."""
    clauses: list[dict[str, Any]] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--where needs KEY=VALUE, not {pair!r}")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        clauses.append({key.strip(): value})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
