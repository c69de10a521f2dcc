"""The OpenAI Batch API: every pending row of a job submitted at once, polled together, at half
the online price; the batches are journaled so a killed run resumes them instead of paying again."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.batch.engines.protocol import RowCallback
from tasks.batch.job import RecordJob
from tasks.batch.journal import BatchLedger, SubmittedBatch
from tasks.batch.reading import Row
from tasks.batch.results import RowResult, failed_result, ok_result
from tasks.errors import ConfigurationError, LLMError
from tasks.llm import (
    Completion,
    Usage,
    check_completion,
    completion_from_body,
    openai_client,
    repair_messages,
)
from tasks.portable import make_portable, portable_reduce
from tasks.reporting import write_atomically

if TYPE_CHECKING:
    import openai

    from tasks.settings import ModelPrice, Settings

logger = logging.getLogger(__name__)

ENDED = ("completed", "failed", "expired", "cancelled")
MAX_REQUESTS_PER_BATCH = 50_000
"""The Batch API's limit on request lines in one input file."""
MAX_FILE_BYTES = 190_000_000
"""The Batch API takes input files up to 200 MB; kept below it."""


def _over_token_limit(batch: Any) -> bool:
    """The API refused the batch because the model's enqueued-token limit was reached."""
    data = batch.errors.data if batch.status == "failed" and batch.errors else None
    return any(getattr(error, "code", None) == "token_limit_exceeded" for error in data or [])


def _key(row: Row) -> str:
    """What identifies a row's request across runs: its key (prompt + job), else its number."""
    return row.key or f"row-{row.number}"


class BatchAPIEngine:
    """OpenAI Batch API: all pending rows submitted up front, failed or expired lines resubmitted.

    `process` gets every pending row of the job at once (`whole_job`). Each round writes the
    requests as JSONL files under `workdir` (at most `requests_per_batch` lines and
    `max_file_bytes` each), uploads them (purpose=batch), creates every batch, records each in
    the `BatchLedger` before polling, then polls them all together until they end, and maps the
    output and error files back to rows by custom_id and row key. Lines that failed, expired,
    went missing or answered outside the schema (resubmitted with a repair prompt) go into the
    next round, at most `rounds` rounds. A re-run resumes the ledger's batches of the same job
    (never sending a row a live or completed batch carries) and cancels the live batches of a
    changed job on the same output. Cost: half the online price.
    """

    name = "batch-api"
    journaled = True
    whole_job = True
    limiter = None
    PRICE_FACTOR = 0.5

    def __init__(
        self,
        client: openai.OpenAI,
        job: RecordJob,
        workdir: Path,
        *,
        ledger_path: Path | None = None,
        price: ModelPrice | None = None,
        rounds: int = 3,
        poll_interval_s: float = 10.0,
        timeout_s: float = 86_400.0,
        use_json_schema: bool = True,
        requests_per_batch: int = MAX_REQUESTS_PER_BATCH,
        max_file_bytes: int = MAX_FILE_BYTES,
        on_poll: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.model = job.model
        self.workdir = workdir
        self.ledger_path = ledger_path or workdir.parent / "journal" / "batches.jsonl"
        self.price = price
        self.rounds = rounds
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.use_json_schema = use_json_schema
        self.requests_per_batch = max(1, min(requests_per_batch, MAX_REQUESTS_PER_BATCH))
        self.max_file_bytes = max_file_bytes
        self.on_poll = on_poll
        self.batches: list[str] = []
        """Ids of the batches this engine submitted."""
        self.resumed: list[str] = []
        """Ids of earlier runs' batches of the same job it polled instead of submitting again."""
        self.cancelled: list[str] = []
        """Ids of earlier runs' live batches of a changed job it cancelled."""
        self.notices: list[str] = []
        self._ledger: BatchLedger | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, job: RecordJob, *, output: Path | None = None, **options: Any
    ) -> BatchAPIEngine:
        """The engine for `job`; its ledger is the one of `output` (the run's output table)."""
        if settings.llm_engine != "openai":
            raise ConfigurationError(
                "--mode batch-api needs an OpenAI-compatible endpoint with the Batch API",
                hint="set OPENAI_API_KEY (and OPENAI_BASE_URL)",
            )
        client = openai_client(settings)
        ledger = BatchLedger.path_for(settings.batch_dir, output)
        options.setdefault("requests_per_batch", settings.batch_rows_per_task)
        engine = cls(
            client,
            job,
            settings.batch_dir / "requests",
            ledger_path=ledger,
            price=settings.price_of(job.model),
            use_json_schema=settings.llm_json_schema,
            **options,
        )
        recipe = functools.partial(cls.from_settings, output=output, **options)
        return make_portable(engine, recipe, settings, job)

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as its settings, job and output (its ledger is a file there)."""
        return portable_reduce(self)

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        ledger = self._open_ledger()
        self._find_unrecorded(ledger)
        self._cancel_changed_job(ledger)
        results: dict[int, RowResult] = {}
        base = {
            row.number: self.job.messages(row.text, describe_schema=not self.use_json_schema)
            for row in rows
        }
        messages = dict(base)
        usage = {row.number: Usage() for row in rows}
        reasons = {row.number: "not submitted" for row in rows}
        carried = {
            key: batch for key, batch in ledger.carrying(self.job.key).items() if batch.usable
        }
        pending = list(rows)
        for round_number in range(1, self.rounds + 1):
            if not pending:
                break
            earlier = {b.batch_id: b for b in (carried.get(_key(r)) for r in pending) if b}
            fresh = [row for row in pending if _key(row) not in carried]
            carried = {}  # later rounds resend what the earlier batches did not answer
            if earlier:
                self.resumed += list(earlier)
                self._say(
                    f"resuming {len(earlier)} Batch API batch(es) of an earlier run of this job "
                    f"({len(pending) - len(fresh)} rows); only the {len(fresh)} rows they do not "
                    "carry are sent"
                )
            batches = [*earlier.values(), *self._submit(fresh, messages, round_number, ledger)]
            sent = {_key(row): messages[row.number] for row in pending}
            by_key = {_key(row): row for row in pending}
            again = functools.partial(self._resubmit, by_key, messages, round_number, ledger)
            answers, errors = self._wait_all(batches, sent, ledger, again)
            still: list[Row] = []
            for row in pending:
                completion = answers.get(_key(row))
                if completion is None:
                    reasons[row.number] = errors.get(_key(row), "missing from the batch output")
                    still.append(row)
                    continue
                usage[row.number] = usage[row.number] + completion.usage
                value, problems = check_completion(completion, self.job.read_answer)
                if not problems:
                    results[row.number] = ok_result(row, value, usage[row.number], completion.model)
                    on_done(row, results[row.number])
                    continue
                reasons[row.number] = "output did not fit the schema: " + "; ".join(problems[:3])
                messages[row.number] = repair_messages(base[row.number], completion.text, problems)
                still.append(row)
            pending = still
        for row in pending:
            reason = f"batch API: {reasons[row.number]} (after {self.rounds} rounds)"
            results[row.number] = failed_result(row, reason, usage[row.number], self.model)
            on_done(row, results[row.number])
        return [results[row.number] for row in rows]

    def close(self) -> None:
        """Close the ledger; batches still running stay recorded for the next run."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _open_ledger(self) -> BatchLedger:
        if self._ledger is None:
            self._ledger = BatchLedger(self.ledger_path)
        return self._ledger

    def _say(self, message: str) -> None:
        """A notice for the user: in the run's log (the terminal, the UI) and in `notices`."""
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        self.notices.append(message)
        try:
            get_run_logger().warning(message)
        except MissingContextError:
            logger.warning(message)

    def _find_unrecorded(self, ledger: BatchLedger) -> None:
        """Batches an earlier run was killed creating (before it recorded their ids): looked up
        by input file among the account's batches since then, recorded, or marked abandoned."""
        import openai

        waiting = {batch.input_file_id: batch for batch in ledger.unconfirmed()}
        if not waiting:
            return
        since = min(batch.at for batch in waiting.values()) - 300  # clock skew
        try:
            for found in self.client.batches.list(limit=100):  # newest first, pages followed
                known = waiting.pop(found.input_file_id, None)
                if known is not None:
                    ledger.submitted(dataclasses.replace(known, batch_id=found.id))
                if not waiting or found.created_at < since:
                    break
        except openai.APIError as exc:
            logger.warning("cannot list batches to find unrecorded ones: %s", exc)
            return
        for input_file_id in waiting:
            ledger.abandoned(input_file_id)

    def _cancel_changed_job(self, ledger: BatchLedger) -> None:
        """Cancel the live batches an earlier run on this output submitted for another job."""
        import openai

        stale = [b for b in ledger.batches() if b.fingerprint != self.job.key and b.ended is None]
        cancelled: list[str] = []
        for known in stale:
            try:
                batch = self.client.batches.retrieve(known.batch_id)
                if batch.status in ENDED:
                    ledger.ended(known.batch_id, batch.status)
                    continue
                self.client.batches.cancel(known.batch_id)
            except openai.APIError as exc:
                logger.warning("batch %s of a changed job: %s", known.batch_id, exc)
                continue
            ledger.ended(known.batch_id, "cancelled")
            cancelled.append(known.batch_id)
        if cancelled:
            self.cancelled += cancelled
            self._say(
                f"the job changed since the last run on this output (prompt, model, schema or "
                f"temperature): cancelled {len(cancelled)} of its Batch API batches still "
                f"running ({', '.join(cancelled[:5])}); their rows are sent with the new job"
            )

    def _submit(
        self,
        rows: list[Row],
        messages: dict[int, list[Any]],
        round_number: int,
        ledger: BatchLedger,
    ) -> list[SubmittedBatch]:
        """Upload and create every batch for `rows` (within the API's limits), each recorded in
        the ledger as soon as it exists."""
        fmt = self.job.response_format(self.use_json_schema)
        groups: list[list[tuple[Row, str]]] = []
        size = 0
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
            line = json.dumps(request, ensure_ascii=False)
            length = len(line.encode()) + 1
            full = groups and (
                len(groups[-1]) >= self.requests_per_batch or size + length > self.max_file_bytes
            )
            if not groups or full:
                groups.append([])
                size = 0
            groups[-1].append((row, line))
            size += length
        return [self._create(group, round_number, ledger) for group in groups]

    def _resubmit(
        self,
        by_key: dict[str, Row],
        messages: dict[int, list[Any]],
        round_number: int,
        ledger: BatchLedger,
        refused: SubmittedBatch,
    ) -> list[SubmittedBatch]:
        """The rows of a refused batch, submitted again."""
        keys = dict.fromkeys(refused.rows.values())
        return self._submit(
            [by_key[k] for k in keys if k in by_key], messages, round_number, ledger
        )

    def _create(
        self, group: list[tuple[Row, str]], round_number: int, ledger: BatchLedger
    ) -> SubmittedBatch:
        first, last = group[0][0].number, group[-1][0].number
        name = f"{self.job.key[:12]}-rows-{first}-{last}-r{round_number}.jsonl"
        path = self.workdir / name
        write_atomically(path, "".join(line + "\n" for _, line in group))
        with path.open("rb") as handle:
            uploaded = self.client.files.create(file=(name, handle), purpose="batch")
        batch = SubmittedBatch(
            batch_id="",
            input_file_id=uploaded.id,
            fingerprint=self.job.key,
            round=round_number,
            rows={f"row-{row.number}": _key(row) for row, _ in group},
            at=time.time(),
        )
        ledger.creating(batch)
        created = self.client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"source": "gristmill", "round": str(round_number)},
        )
        batch = dataclasses.replace(batch, batch_id=created.id)
        ledger.submitted(batch)
        self.batches.append(batch.batch_id)
        return batch

    def _wait_all(
        self,
        batches: list[SubmittedBatch],
        sent: dict[str, list[Any]],
        ledger: BatchLedger,
        again: Callable[[SubmittedBatch], list[SubmittedBatch]],
    ) -> tuple[dict[str, Completion], dict[str, str]]:
        """Poll every batch until all have ended: the answers and the errors, by row key.

        A batch the API refused for its enqueued-token limit is held, and sent `again` when one
        of the others ends (or at once when none is left): the limit paces the job, it does not
        fail rows or use up rounds. An earlier run's batch the API does not know (another
        endpoint) is sent again at once.
        """
        import openai

        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        live = {batch.batch_id: batch for batch in batches}
        held: list[SubmittedBatch] = []
        deadline = time.monotonic() + self.timeout_s
        while live or held:
            freed = 0
            for batch_id, known in list(live.items()):
                try:
                    batch = self.client.batches.retrieve(batch_id)
                except openai.NotFoundError:  # a ledger from another endpoint or account
                    logger.warning("batch %s is unknown to the API: its rows are sent", batch_id)
                    del live[batch_id]
                    ledger.ended(batch_id, "unknown")
                    live.update((batch.batch_id, batch) for batch in again(known))
                    continue
                counts = batch.request_counts.model_dump() if batch.request_counts else {}
                if self.on_poll is not None:
                    self.on_poll(batch.status, counts)
                logger.info("batch %s: %s %s", batch_id, batch.status, counts)
                if batch.status not in ENDED:
                    continue
                del live[batch_id]
                ledger.ended(batch_id, batch.status)
                if _over_token_limit(batch):
                    held.append(known)
                    continue
                freed += 1
                self._collect(batch, known, sent, answers, errors)
            for refused in held[: max(freed, 0 if live else 1)]:
                held.remove(refused)
                live.update((batch.batch_id, batch) for batch in again(refused))
            if not live and not held:
                break
            if time.monotonic() > deadline:
                for known in held:
                    for key in known.rows.values():
                        errors.setdefault(key, "the enqueued-token limit never left room")
                for batch_id in live:
                    with contextlib.suppress(Exception):
                        self.client.batches.cancel(batch_id)
                        ledger.ended(batch_id, "cancelled")
                raise LLMError(
                    f"{len(live)} batch(es) did not finish in {self.timeout_s:.0f} s: "
                    + ", ".join(list(live)[:5])
                )
            time.sleep(self.poll_interval_s)
        return answers, errors

    def _collect(
        self,
        batch: Any,
        known: SubmittedBatch,
        sent: dict[str, list[Any]],
        answers: dict[str, Completion],
        errors: dict[str, str],
    ) -> None:
        """An ended batch's lines into `answers` and `errors` (by row key)."""
        if batch.status not in ("completed", "expired"):
            detail = ""
            if batch.errors and batch.errors.data:
                detail = ": " + "; ".join(str(e.message) for e in batch.errors.data[:3])
            reason = f"batch {batch.id} ended {batch.status}{detail}"
            for key in known.rows.values():
                errors.setdefault(key, reason)
            return
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = self.client.files.content(file_id).text
            for line in content.splitlines():
                with contextlib.suppress(LLMError, ValueError, KeyError, TypeError, AttributeError):
                    self._map_line(json.loads(line), known.rows, sent, answers, errors)

    def _map_line(
        self,
        entry: dict[str, Any],
        keys: dict[str, str],
        sent: dict[str, list[Any]],
        answers: dict[str, Completion],
        errors: dict[str, str],
    ) -> None:
        """One line of the output or error file: the row's answer, or why there is none."""
        key = keys[str(entry["custom_id"])]
        response = entry.get("response") or {}
        body = response.get("body") or {}
        if entry.get("error") or response.get("status_code") != 200:
            error = entry.get("error") or body.get("error") or {}
            code = error.get("code") or f"HTTP {response.get('status_code')}"
            errors[key] = f"{code}: {error.get('message', '')}".strip(": ")[:300]
            return
        answers[key] = completion_from_body(
            body,
            sent.get(key, []),
            model=self.model,
            price=self.price,
            price_factor=self.PRICE_FACTOR,
        )
