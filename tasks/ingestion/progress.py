"""How far an ingest is, between whole document batches: `IngestProgress` counts documents
done and chunks embedded, `OneEmbedAtATime` feeds it from the embedder's own batches."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.embeddings import Embedder, Vectors
from tasks.reporting import Progress, ProgressCallback


@dataclass(eq=False)
class BatchCounts:
    """One document batch in flight: its documents, and the characters of the texts it handed
    to the embedder and of those embedded so far. Compared by identity: two batches with the
    same counts are still two batches."""

    documents: int
    known_chars: int = 0
    embedded_chars: int = 0


class IngestProgress:
    """Documents done of the total and chunks embedded of those known so far, reported to
    `on_progress` at every change (every sub-batch the embedder finishes).

    A batch in flight counts as the share of its text embedded, by characters (`Progress.work`):
    embedding is most of an ingest and costs about its tokens, so the bar and its estimate of
    the time left move from the first sub-batch on, at the pace of the work, instead of jumping
    once per document batch (counted by texts, the longest, embedded first, made the early pace
    look slow). Chunks are known only when their batch reaches the embedder, so `parts_known`
    grows as batches start. Reports are made under a lock, so the counts a caller sees never go
    back (two batches run at once).
    """

    def __init__(self, total: int, on_progress: ProgressCallback | None) -> None:
        self.total = total
        self.on_progress = on_progress
        self.done = 0
        self.known = 0
        self.embedded = 0
        self._in_flight: list[BatchCounts] = []
        self._lock = threading.Lock()

    def skipped(self, documents: int) -> None:
        """Documents finished without a batch (duplicate source names)."""
        with self._lock:
            self.done += documents
            self._report()

    def batch(self, documents: int) -> BatchCounts:
        with self._lock:
            counts = BatchCounts(documents)
            self._in_flight.append(counts)
            return counts

    def texts_known(self, batch: BatchCounts, texts: list[str]) -> None:
        with self._lock:
            batch.known_chars += sum(map(len, texts))
            self.known += len(texts)
            self._report()

    def texts_embedded(self, batch: BatchCounts, texts: list[str]) -> None:
        with self._lock:
            batch.embedded_chars += sum(map(len, texts))
            self.embedded += len(texts)
            self._report()

    def batch_done(self, batch: BatchCounts) -> None:
        with self._lock:
            self._in_flight.remove(batch)
            self.done += batch.documents
            self._report()

    def snapshot(self) -> Progress:
        share = sum(
            b.documents * b.embedded_chars / b.known_chars for b in self._in_flight if b.known_chars
        )
        return Progress(self.done, self.total, self.embedded, self.known, self.done + share)

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.snapshot())


def embed_in_parts(
    embedder: Embedder, texts: list[str], on_part: Callable[[list[str]], None] | None = None
) -> Vectors:
    """`embedder.embed(texts)`, a part at a time, calling `on_part(part's texts)` after each.

    The texts are sorted longest first and cut into parts of the embedder's own `batch_size`
    (all at once when it has none): the local embedder then pads each part exactly as it would
    pad its own sub-batches of the whole list (it sorts the same way), and the OpenAI one makes
    the same requests, so reporting costs no speed. Vectors come back in the order of `texts`.
    """
    size = getattr(embedder, "batch_size", None)
    if on_part is None or not isinstance(size, int) or size < 1 or len(texts) <= size:
        vectors = embedder.embed(texts)
        if on_part is not None:
            on_part(texts)
        return vectors
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    result = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(order), size):
        part = order[start : start + size]
        chosen = [texts[i] for i in part]
        result[part] = embedder.embed(chosen)
        on_part(chosen)
    return result


class OneEmbedAtATime:
    """An embedder whose `embed` calls run one at a time, for batches ingested side by side.

    `ingest_files` keeps two document batches in flight so that one batch's loading, chunking,
    checks and writes (single-threaded Python, ~15% of an ingest) run while the other batch
    embeds. The local embedder already uses every core, so two embeddings at once would only
    contend: they take turns. `counting` gives a batch its own view that reports its texts to
    an `IngestProgress`. Everything else is the wrapped embedder's.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        lock: threading.Lock | None = None,
        progress: tuple[IngestProgress, BatchCounts] | None = None,
    ) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self._lock = lock or threading.Lock()
        self._progress = progress

    def counting(self, progress: IngestProgress, batch: BatchCounts) -> OneEmbedAtATime:
        """The same embedder and turn, reporting `batch`'s texts to `progress`."""
        return OneEmbedAtATime(self.embedder, lock=self._lock, progress=(progress, batch))

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: list[str]) -> Vectors:
        if self._progress is None:
            with self._lock:
                return self.embedder.embed(texts)
        progress, batch = self._progress
        progress.texts_known(batch, texts)  # known while waiting for its turn
        with self._lock:
            return embed_in_parts(
                self.embedder, texts, lambda part: progress.texts_embedded(batch, part)
            )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle protocols and private state stay this object's
            raise AttributeError(name)
        return getattr(self.embedder, name)
