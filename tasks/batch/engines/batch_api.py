"""The OpenAI Batch API: one batch job per row batch, at half the online price."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.batch.engines.protocol import RowCallback
from tasks.batch.job import RecordJob
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
from tasks.reporting import write_atomically

if TYPE_CHECKING:
    import openai

    from tasks.settings import ModelPrice, Settings

logger = logging.getLogger(__name__)


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
    limiter = None
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
        base = {
            row.number: self.job.messages(row.text, describe_schema=not self.use_json_schema)
            for row in rows
        }
        messages = dict(base)
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
                completion = answers.get(custom_id)
                if completion is None:
                    reasons[row.number] = errors.get(custom_id, "missing from the batch output")
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
        """Nothing held between rounds."""

    def _run_round(
        self, rows: list[Row], messages: dict[int, list[Any]], round_number: int
    ) -> tuple[dict[str, Completion], dict[str, str]]:
        """Submit one round and wait for it: the answers and the errors, by custom_id."""
        fmt = self.job.response_format(self.use_json_schema)
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
        write_atomically(path, "\n".join(lines) + "\n")
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
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        if batch.status not in ("completed", "expired"):
            detail = ""
            if batch.errors and batch.errors.data:
                detail = ": " + "; ".join(str(e.message) for e in batch.errors.data[:3])
            reason = f"batch {batch.id} ended {batch.status}{detail}"
            return answers, dict.fromkeys((f"row-{r.number}" for r in rows), reason)
        sent = {f"row-{row.number}": messages[row.number] for row in rows}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = self.client.files.content(file_id).text
            for line in content.splitlines():
                with contextlib.suppress(LLMError, ValueError, KeyError, TypeError, AttributeError):
                    self._map_line(json.loads(line), sent, answers, errors)
        return answers, errors

    def _map_line(
        self,
        entry: dict[str, Any],
        sent: dict[str, list[Any]],
        answers: dict[str, Completion],
        errors: dict[str, str],
    ) -> None:
        """One line of the output or error file: the row's answer, or why there is none."""
        custom_id = str(entry["custom_id"])
        response = entry.get("response") or {}
        body = response.get("body") or {}
        if entry.get("error") or response.get("status_code") != 200:
            error = entry.get("error") or body.get("error") or {}
            code = error.get("code") or f"HTTP {response.get('status_code')}"
            errors[custom_id] = f"{code}: {error.get('message', '')}".strip(": ")[:300]
            return
        answers[custom_id] = completion_from_body(
            body,
            sent.get(custom_id, []),
            model=self.model,
            price=self.price,
            price_factor=self.PRICE_FACTOR,
        )

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
