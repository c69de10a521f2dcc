"""Reading the input: CSV, JSONL or Parquet streamed in chunks, each row given its id and text;
rows that cannot be used get their problem (they end `invalid_input`)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.batch.job import RecordJob
from tasks.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


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


SURROGATE = re.compile("[\udc80-\udcff]")


def _check_utf8(values: dict[str, Any], problem: str | None) -> _RawRow:
    bad = [k for k, v in values.items() if isinstance(v, str) and SURROGATE.search(v)]
    if not bad:
        return values, problem
    clean = {k: SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v for k, v in values.items()}
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


def iter_row_chunks(
    reader: RecordReader, job: RecordJob, chunk_rows: int, numbers: range | None = None
) -> Iterator[list[Row]]:
    """The input as screened rows, `chunk_rows` at a time; with `numbers`, only those rows (a
    shard's range), their ids given as in a whole run (repeats are counted from the top)."""
    ids = RowIds(job.id_column)
    chunk: list[tuple[int, dict[str, Any], str | None]] = []
    for number, (values, problem) in enumerate(reader.raw_rows()):
        if numbers is not None and number not in numbers:
            if number >= numbers.stop:
                break  # a row's id depends on the rows before it only
            ids.assign(values, problem, number)
            continue
        chunk.append((number, values, problem))
        if len(chunk) >= chunk_rows:
            yield screen_rows(job, ids, chunk)
            chunk = []
    if chunk:
        yield screen_rows(job, ids, chunk)


def count_rows(reader: RecordReader) -> int:
    """The exact number of input rows (a read of the whole input): what shards cut by range."""
    return sum(1 for _ in reader.raw_rows())


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
