"""Rows already done: the resume journal and, for --retry-failed, the previous output.

Resume: every row that ends `ok` is appended at once to a JSONL journal under
`<batch_dir>/journal/`, keyed on sha256(rendered prompt, system prompt, schema, model,
temperature). A re-run (after a kill, a crash or a changed input) takes finished rows from the
journal and pays only for the rest. The journal is per row, not per task, because a task is a
batch of rows: Prefect's task cache would lose every finished row of a task killed midway.

Batch API jobs also keep a `BatchLedger`: every batch submitted (its id, input file, job
fingerprint and the rows it carries), written before it is polled, so a re-run after a kill
resumes polling those batches instead of paying for the same rows again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.batch.job import RecordJob
from tasks.batch.reading import RecordReader, Row
from tasks.batch.results import RowResult, reused_result
from tasks.errors import UsageError
from tasks.portable import make_portable, portable_reduce


class RowJournal:
    """Append-only JSONL of rows that ended `ok`, keyed on `RecordJob.row_key`.

    One file per job key under `<batch_dir>/journal/` (and one per shard of a sharded job, each
    reading the others' at start); loaded once (a dict of finished rows),
    appended per row (one write of a whole line to an O_APPEND file) so a killed run loses at
    most the rows in flight. A torn last line is ignored on load. One run per job at a time;
    within it, several processes (Dask workers) may share the file: each pickles as its path and
    is opened once per process, and a row it does not know is looked for again in what the
    others appended since (a task re-run after its worker died finds the rows already paid for).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._done: dict[str, dict[str, Any]] = {}
        # the job's other files too: each shard of a sharded job appends to its own
        stem = path.name.split(".", 1)[0]
        for part in sorted(path.parent.glob(f"{stem}*.jsonl")) if path.parent.is_dir() else ():
            if part == path:
                continue
            with part.open(encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entry = json.loads(line)
                        self._done[entry["key"]] = entry
        self._read = 0
        """Bytes of this file read into `_done` (complete lines only)."""
        self._catch_up()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("ab", buffering=0)
        make_portable(self, RowJournal, path)

    def __reduce__(self) -> tuple[Any, ...]:
        return portable_reduce(self)

    def _catch_up(self) -> None:
        """Read the lines appended to the file since the last read (by any process)."""
        try:
            with self.path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_size <= self._read:
                    return
                handle.seek(self._read)
                pending = b""
                while block := handle.read(1 << 22):
                    pending += block
                    complete = pending[: pending.rfind(b"\n") + 1]
                    pending = pending[len(complete) :]  # a torn or half-written line waits
                    self._read += len(complete)
                    for line in complete.splitlines():
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            entry = json.loads(line)
                            self._done[entry["key"]] = entry
        except FileNotFoundError:
            return

    @classmethod
    def for_job(cls, batch_dir: Path, job: RecordJob, writer: str = "") -> RowJournal:
        """The job's journal; `writer` names this writer's own file (a shard: `3-of-4`), so
        shards on several machines never append to one file, and each reads them all."""
        name = job.key[:24] + (f".{writer}" if writer else "")
        return cls(batch_dir / "journal" / f"{name}.jsonl")

    def __len__(self) -> int:
        return len(self._done)

    def get(self, row: Row) -> RowResult | None:
        entry = self._done.get(row.key)
        if entry is None and row.key:
            with self._lock:
                self._catch_up()
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
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            self._done[row.key] = entry
            self._handle.write(line)

    def close(self) -> None:
        with self._lock:
            self._handle.close()


@dataclass
class SubmittedBatch:
    """One Batch API batch as the ledger knows it."""

    batch_id: str
    input_file_id: str
    fingerprint: str
    """`RecordJob.key` of the job that submitted it."""
    round: int
    rows: dict[str, str]
    """custom_id -> row key of every request line it carries."""
    ended: str | None = None
    """Its final status once seen (completed, failed, expired, cancelled), else None."""
    at: float = 0.0
    """When it was (about to be) created, Unix time."""

    @property
    def usable(self) -> bool:
        """Live or completed: its rows need not (must not) be sent again unless a line failed."""
        return self.ended in (None, "completed")


class BatchLedger:
    """Append-only JSONL of the Batch API batches submitted for one output.

    One file per output path under `<batch_dir>/journal/`, so a re-run of a changed job on the
    same output finds (and cancels) the old job's live batches. Each batch is appended, flushed
    and fsynced twice: `creating` (its input file and rows) just before it is created, so a kill
    between creating and recording it leaves a trace the next run looks up by input file, and
    `submitted` (its id) right after, before it is polled; its end is appended when seen. A torn
    last line is ignored on load. One writer per output at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._batches: dict[str, SubmittedBatch] = {}
        self._creating: dict[str, SubmittedBatch] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                        self._load(json.loads(line))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    @staticmethod
    def path_for(batch_dir: Path, output: Path | None) -> Path:
        """The ledger of the runs writing `output` (one shared ledger when there is none)."""
        if output is None:
            return batch_dir / "journal" / "batches.jsonl"
        scope = hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:16]
        return batch_dir / "journal" / f"batches-{scope}.jsonl"

    def _load(self, entry: dict[str, Any]) -> None:
        event = entry["event"]
        if event in ("creating", "submitted"):
            batch = SubmittedBatch(
                batch_id=str(entry.get("batch_id") or ""),
                input_file_id=str(entry["input_file_id"]),
                fingerprint=str(entry["fingerprint"]),
                round=int(entry.get("round", 1)),
                rows={str(k): str(v) for k, v in entry["rows"].items()},
                at=float(entry.get("at", 0.0)),
            )
            if event == "creating":
                self._creating[batch.input_file_id] = batch
            else:
                self._creating.pop(batch.input_file_id, None)
                self._batches[batch.batch_id] = batch
        elif event == "abandoned":
            self._creating.pop(str(entry["input_file_id"]), None)
        elif event == "ended" and entry["batch_id"] in self._batches:
            self._batches[entry["batch_id"]].ended = str(entry["status"])

    def batches(self) -> list[SubmittedBatch]:
        """Every batch in submission order."""
        with self._lock:
            return list(self._batches.values())

    def carrying(self, fingerprint: str) -> dict[str, SubmittedBatch]:
        """Row key -> the latest batch of this job that carries it."""
        latest: dict[str, SubmittedBatch] = {}
        for batch in self.batches():
            if batch.fingerprint == fingerprint:
                latest.update(dict.fromkeys(batch.rows.values(), batch))
        return latest

    def unconfirmed(self) -> list[SubmittedBatch]:
        """Batches about to be created when a run stopped, never recorded as created (no id)."""
        with self._lock:
            return list(self._creating.values())

    def creating(self, batch: SubmittedBatch) -> None:
        """`batch` (without its id yet) is about to be created."""
        with self._lock:
            self._creating[batch.input_file_id] = batch
            self._append(self._entry("creating", batch))

    def submitted(self, batch: SubmittedBatch) -> None:
        with self._lock:
            self._creating.pop(batch.input_file_id, None)
            self._batches[batch.batch_id] = batch
            self._append(self._entry("submitted", batch))

    def abandoned(self, input_file_id: str) -> None:
        """No batch was created from this input file: stop looking for one."""
        with self._lock:
            if self._creating.pop(input_file_id, None) is not None:
                self._append({"event": "abandoned", "input_file_id": input_file_id})

    @staticmethod
    def _entry(event: str, batch: SubmittedBatch) -> dict[str, Any]:
        return {
            "event": event,
            "batch_id": batch.batch_id or None,
            "input_file_id": batch.input_file_id,
            "fingerprint": batch.fingerprint,
            "round": batch.round,
            "rows": batch.rows,
            "at": batch.at,
        }

    def ended(self, batch_id: str, status: str) -> None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.ended == status:
                return
            batch.ended = status
            self._append({"event": "ended", "batch_id": batch_id, "status": status})

    def _append(self, entry: dict[str, Any]) -> None:
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

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
