"""Writing the output and the dead-letter rows: every input row once, in order, atomically."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.batch.job import RESERVED_COLUMNS, RESULT_COLUMNS, RecordJob
from tasks.batch.reading import SURROGATE, Row, record_format
from tasks.batch.results import RowResult
from tasks.reporting import file_mode

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


def cell_text(value: Any) -> str | None:
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
        job: RecordJob,
        input_columns: list[str],
        *,
        input_schema: pa.Schema | None = None,
    ) -> None:
        self.path = path
        self.format = record_format(path)
        self.job = job
        self.input_columns = input_columns
        self.columns = output_columns(job, input_columns)
        self.rows = 0
        self.dead_letters = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temps(path)
        if removed:
            logger.info("removed %d temporary file(s) a stopped run left for %s", removed, path)
        self._locks: list[int] = []
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
            self._csv.writerow(self.columns)
        elif self.format == "jsonl":
            self._handle = self._tmp.open("w", encoding="utf-8")

    def _temp(self, path: Path) -> Path:
        """A temp file next to `path`, locked while this writer lives (see remove_stale_temps)."""
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._locks.append(fd)
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

    def write_rows(self, rows: list[Row], results: list[RowResult]) -> list[dict[str, Any]]:
        """Write a chunk in input order (rows not `ok` to the dead-letter file as well); return
        its output records."""
        pairs = list(zip(rows, results, strict=True))
        records = [output_record(r, result, self.job, self.input_columns) for r, result in pairs]
        dead = [dead_letter_entry(r, result) for r, result in pairs if result.status != "ok"]
        self.write(records, dead)
        return records

    def write(self, records: list[dict[str, Any]], dead: list[dict[str, Any]]) -> None:
        for entry in dead:
            self._dead.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self.dead_letters += len(dead)
        self.rows += len(records)
        if self.format == "csv":
            for record in records:
                self._csv.writerow([_safe(cell_text(record.get(c))) for c in self.columns])
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
                values = [cell_text(v) for v in values]
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
        self._unlock()

    @property
    def dead_letter(self) -> Path | None:
        """The dead-letter file, when there are failed or invalid rows."""
        return self._dead_path if self.dead_letters else None

    def abort(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)
        self._dead_tmp.unlink(missing_ok=True)
        self._unlock()

    def _unlock(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()

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
    return SURROGATE.sub("\ufffd", text) if SURROGATE.search(text) else text


def remove_stale_temps(path: Path) -> int:
    """Delete the temp files a killed run left for `path` and its dead-letter file.

    Only names of our own pattern (`.<name>.<8 random characters>.tmp`, as `RecordWriter` makes
    them) are touched, and only those no live writer holds locked. Returns how many went.
    """
    names = "|".join(re.escape(p.name) for p in (path, dead_letter_path(path)))
    pattern = re.compile(rf"\.(?:{names})\.[a-z0-9_]{{8}}\.tmp")
    removed = 0
    for candidate in path.parent.iterdir():
        if pattern.fullmatch(candidate.name) and _remove_unless_locked(candidate):
            removed += 1
    return removed


def _remove_unless_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except OSError:
        return False  # a writer is still at work on it
    finally:
        os.close(fd)
    return True


def dead_letter_entry(row: Row, result: RowResult) -> dict[str, Any]:
    return {
        "row_number": row.number,
        "row_id": row.row_id,
        "status": result.status,
        "error": result.error,
        "values": {k: _safe(cell_text(v)) for k, v in row.values.items()},
    }
