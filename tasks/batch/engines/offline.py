"""The built-in tasks without an LLM: extractive summary, zero-shot classify, embed."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tasks.batch.engines.protocol import RowCallback
from tasks.batch.job import RecordJob
from tasks.batch.reading import Row
from tasks.batch.results import RowResult, failed_result, failure_reason, ok_result
from tasks.errors import ConfigurationError
from tasks.llm import Usage
from tasks.portable import make_portable, portable_reduce

if TYPE_CHECKING:
    from tasks.embeddings import Embedder


class OfflineRowEngine:
    """The built-in tasks without an LLM: extractive summary, zero-shot classify, embed."""

    journaled = False
    whole_job = False
    limiter = None

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
        make_portable(self, OfflineRowEngine, job, embedder)

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as its job and embedder (which travels as its model files or
        settings), built there once per process."""
        return portable_reduce(self)

    def process(self, rows: list[Row], on_done: RowCallback) -> list[RowResult]:
        try:
            values = self._values([row.text for row in rows])
        except Exception as exc:
            results = [failed_result(row, failure_reason(exc)) for row in rows]
        else:
            results = [
                ok_result(row, v, Usage(), self.model) for row, v in zip(rows, values, strict=True)
            ]
        for row, result in zip(rows, results, strict=True):
            on_done(row, result)
        return results

    def close(self) -> None:
        """Nothing to free (the embedder is the settings' to keep)."""

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
        from tasks.embeddings import unit_vectors

        assert self.embedder is not None
        vectors = self.embedder.embed(texts)
        if self.job.task == "embed":
            return [{"embedding": [round(float(x), 6) for x in v]} for v in vectors]
        with self._lock:
            if self._labels is None:
                self._labels = unit_vectors(self.embedder.embed(list(self.job.labels)))
        scores = unit_vectors(vectors) @ self._labels.T
        best = np.argmax(scores, axis=1)
        return [
            {"label": self.job.labels[int(b)], "score": round(float(scores[i, b]), 4)}
            for i, b in enumerate(best)
        ]
