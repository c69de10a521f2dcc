"""Rows already done: the resume journal and, for --retry-failed, the previous output.

Resume: every row that ends `ok` is appended at once to a JSONL journal under
`<batch_dir>/journal/`, keyed on sha256(rendered prompt, system prompt, schema, model,
temperature). A re-run (after a kill, a crash or a changed input) takes finished rows from the
journal and pays only for the rest. The journal is per row, not per task, because a task is a
batch of rows: Prefect's task cache would lose every finished row of a task killed midway.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from tasks.batch.job import RecordJob
from tasks.batch.reading import RecordReader, Row
from tasks.batch.results import RowResult, reused_result
from tasks.errors import UsageError


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
        return reused_result(
            row,
            result=entry.get("result"),
            prompt_tokens=entry.get("prompt_tokens", 0),
            completion_tokens=entry.get("completion_tokens", 0),
            model=entry.get("model"),
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
        return reused_result(row, model=previous.get("model"), record=previous)
