"""The embedding engine: one small protocol, a local ONNX MiniLM and the OpenAI API.

Every embedder returns a float32 array of shape (len(texts), dimension). Vectors from different
embedders never share a collection: the store records `name` and `dimension` (see vectorstore).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex

import numpy as np
from numpy.typing import NDArray
from pydantic import SecretStr

from tasks.errors import ConfigurationError, LLMError
from tasks.llm import Usage, configured_client, llm_error
from tasks.model_files import MODEL_FILE, TOKENIZER_FILE, missing_files, provision_embedding_model
from tasks.portable import make_portable, portable_reduce

if TYPE_CHECKING:
    import onnxruntime
    import openai
    import tokenizers

    from tasks.settings import ModelPrice, Settings

Vectors = NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into vectors; `name` and `dimension` identify the vector space."""

    name: str

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: list[str]) -> Vectors: ...


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), so their dot products are cosines."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class LocalOnnxEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime, computed exactly like sentence-transformers.

    Word-piece tokens truncated at 256 (the model's max_seq_length), mean pooling over the
    attention mask, L2 normalisation. Texts are sorted by length and each batch is padded to its
    longest member only, which on mixed-length text is 6-16x faster than padding every input
    to 256 and gives the same vectors (benchmarks/embedder_speed.py). A batch holds at most
    `batch_size` texts and at most `max_batch_tokens` padded word pieces: attention memory grows
    with batch x length^2, and onnxruntime keeps the largest batch's buffers in its arena, so
    16 texts of 256 word pieces held ~340 MB more than the short batches did; capped at 1,024
    tokens (4 such texts) they held ~85 MB and took no more CPU (benchmarks/README.md, docs
    tree). The session loads on first use, once, under a lock; `embed` may be called from
    several threads at once.
    """

    MAX_TOKENS = 256
    # Word pieces of text that fit, after [CLS] and [SEP]: the chunk budget for this model.
    max_text_tokens = MAX_TOKENS - 2
    # BERT's pre-tokenizer splits on whitespace before word pieces are made, so no piece spans
    # a space or line break: `count_tokens` of texts joined by whitespace is the sum of their
    # counts (tests/tasks/documents/test_chunk_counts.py checks it), and chunking need not count a
    # chunk again once its parts are counted (`chunk_document(counts_add_up=True)`).
    TOKEN_COUNTS_ADD_UP = True

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str = "all-MiniLM-L6-v2-int8",
        batch_size: int = 16,
        max_batch_tokens: int = 1024,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads or _default_threads()
        self._lock = threading.Lock()
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._counter: tokenizers.Tokenizer | None = None
        self._inputs: frozenset[str] = frozenset()

    @property
    def dimension(self) -> int:
        return 384

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its model folder and options (a Dask worker loads the model itself, from
        the same path on its machine), without the session, tokenizers and lock."""
        return {
            "model_dir": self.model_dir,
            "name": self.name,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        """Built from settings (`build_embedder`): sent as that recipe and loaded once per
        process, so the document batches a Dask worker runs share one session; otherwise as
        its state above, loaded again wherever it is unpickled."""
        if getattr(self, "_portable_recipe", None) is not None:
            return portable_reduce(self)
        return super().__reduce_ex__(protocol)

    def check_files(self) -> None:
        """Complete the model folder from the installed packages when it lacks files (a local
        copy, as `make setup` makes: never a download); raise ConfigurationError when it cannot.
        """
        missing = missing_files(self.model_dir)
        if not missing:
            return
        try:
            provision_embedding_model(self.model_dir)
        except (ConfigurationError, OSError) as exc:
            raise ConfigurationError(
                f"the local embedding model is missing {', '.join(missing)} in {self.model_dir} "
                f"and cannot be copied from the installed packages: {exc}",
                hint=f"run `make setup` (or `python -m tasks.model_files {self.model_dir}`)",
            ) from None

    def _load(self) -> tuple[onnxruntime.InferenceSession, tokenizers.Tokenizer]:
        if self._session is not None and self._tokenizer is not None:
            return self._session, self._tokenizer
        with self._lock:
            if self._session is None or self._tokenizer is None:
                self.check_files()
                import onnxruntime
                import tokenizers

                tokenizer = tokenizers.Tokenizer.from_file(str(self.model_dir / TOKENIZER_FILE))
                # tokenizer.json pads and truncates to 128; sentence-transformers uses 256 and
                # pads each batch to its longest input (`_embed_batch`).
                tokenizer.enable_truncation(max_length=self.MAX_TOKENS)
                tokenizer.no_padding()
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Memory patterns are planned per input shape, and every batch has its own
                # length: kept on, they grew RSS by ~150 MB over a thousand mixed-length chunks
                # for no measured speed gain (benchmarks/ingest_speed.py). Same vectors.
                options.enable_mem_pattern = False
                try:
                    session = onnxruntime.InferenceSession(
                        str(self.model_dir / MODEL_FILE),
                        sess_options=options,
                        providers=["CPUExecutionProvider"],
                    )
                except Exception as exc:  # onnxruntime raises its own untyped errors
                    raise ConfigurationError(
                        f"cannot load {self.model_dir / MODEL_FILE}: {exc}"[:400],
                        hint=f"re-provision it: `python -m tasks.model_files {self.model_dir}`",
                    ) from None
                self._inputs = frozenset(i.name for i in session.get_inputs())
                self._tokenizer = tokenizer
                self._session = session
        assert self._session is not None and self._tokenizer is not None
        return self._session, self._tokenizer

    def load(self) -> None:
        """Load the tokenizers and the ONNX session now (and run it once), not on first use."""
        self.count_tokens(["warm up"])
        self.embed(["warm up"])

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word pieces per text, without [CLS] and [SEP]; past `max_text_tokens` text is cut off.

        Pass it to `chunk_document(count=...)` to size chunks in this model's own tokens. Loads
        only the tokenizer, not the ONNX session, so a run that has nothing to embed (an
        unchanged corpus) never loads the model.
        """
        encodings = self._load_counter().encode_batch(texts, add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def _load_counter(self) -> tokenizers.Tokenizer:
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self.check_files()
                    import tokenizers

                    counter = tokenizers.Tokenizer.from_file(str(self.model_dir / TOKENIZER_FILE))
                    counter.no_truncation()
                    counter.no_padding()
                    self._counter = counter
        return self._counter

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        session, tokenizer = self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            group = order[start : start + self.batch_size]
            encoded = tokenizer.encode_batch([texts[i] for i in group])
            # Longest first in word pieces (characters only approximate them), so each batch
            # is padded to its first text's length.
            ids = [e.ids for e in encoded]
            pieces = sorted(zip(group, ids, strict=True), key=lambda p: -len(p[1]))
            while pieces:
                size = max(1, self.max_batch_tokens // len(pieces[0][1]))
                batch, pieces = pieces[:size], pieces[size:]
                result[[i for i, _ in batch]] = self._embed_batch(session, [p for _, p in batch])
        return result

    def _embed_batch(self, session: onnxruntime.InferenceSession, ids: list[list[int]]) -> Vectors:
        """Vectors of word-piece `ids`, padded with 0 ([PAD]) to the longest."""
        input_ids = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
        for row, pieces in enumerate(ids):
            input_ids[row, : len(pieces)] = pieces
        mask = (np.arange(input_ids.shape[1]) < np.array([[len(p)] for p in ids])).astype(np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = session.run(None, feeds)[0]  # last_hidden_state: (batch, sequence, 384)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


# Output sizes of OpenAI's embedding models; other models are probed once.
OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder:
    """Embeddings through the openai SDK (OpenAI or any compatible server), with usage and cost.

    Transport retries are the SDK's (`max_retries` on the client); a failure after them raises
    LLMError with the secret-free reason.
    """

    def __init__(
        self,
        client: openai.OpenAI,
        model: str = "text-embedding-3-small",
        *,
        batch_size: int = 64,
        dimensions: int | None = None,
        price: ModelPrice | None = None,
        secrets: tuple[SecretStr | None, ...] = (),
    ) -> None:
        self.client = client
        self.model = model
        self.name = model if dimensions is None else f"{model}@{dimensions}"
        self.batch_size = batch_size
        self.dimensions = dimensions
        self.price = price
        self.usage = Usage()
        self._secrets = secrets
        self._lock = threading.Lock()
        self._dimension: int | None = dimensions or OPENAI_DIMENSIONS.get(model)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        client = configured_client(
            settings,
            "the openai embedder",
            hint="set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI server), "
            "or GRISTMILL_EMBEDDING_ENGINE=local",
        )
        embedder = cls(
            client,
            settings.embedding_model,
            batch_size=settings.embedding_batch_size,
            price=settings.price_of(settings.embedding_model),
            secrets=(settings.openai_api_key,),
        )
        return make_portable(embedder, cls.from_settings, settings)

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a Dask worker as its settings, built there once per process (its usage
        count is that process's)."""
        return portable_reduce(self)

    @property
    def dimension(self) -> int:
        """The vector size: known for OpenAI's models, asked of the server once otherwise."""
        if self._dimension is None:
            self._dimension = int(self._request(["dimension probe"]).shape[1])
        return self._dimension

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = [
            self._request(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts)
        if self._dimension is None:
            self._dimension = int(vectors.shape[1])
        return vectors

    def _request(self, texts: list[str]) -> Vectors:
        import openai

        kwargs: dict[str, Any] = {}
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        # The API rejects empty strings; a single space embeds as "nothing" just as well.
        inputs = [text if text.strip() else " " for text in texts]
        try:
            response = self.client.embeddings.create(model=self.model, input=inputs, **kwargs)
        except openai.APIError as exc:
            raise llm_error(exc, "embedding", self.client.max_retries + 1, self._secrets) from None
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise LLMError(
                f"embedding endpoint returned {len(data)} vectors for {len(texts)} texts",
                transient=True,
            )
        vectors = np.array([item.embedding for item in data], dtype=np.float32)
        expected = self._dimension
        if expected is not None and vectors.shape[1] != expected:
            raise LLMError(
                f"{self.model} returned {vectors.shape[1]}-dimensional vectors, "
                f"expected {expected}",
                hint="set the embedding dimension that matches the model",
            )
        tokens = response.usage.prompt_tokens if response.usage is not None else 0
        cost = tokens * self.price.input / 1e6 if self.price is not None else 0.0
        with self._lock:
            self.usage = self.usage + Usage(calls=1, prompt_tokens=tokens, cost_usd=round(cost, 8))
        return vectors


def load_in_background(
    embedder: Embedder, then: Callable[[], None] | None = None
) -> threading.Thread | None:
    """Start loading a local model in a background thread, so that ~2 s of loading overlap a
    command's set-up (starting a Prefect server, a flow run); None for a remote embedder, which
    has nothing to load. `then` runs on the same thread once the model is loaded. A load that
    fails here fails again, in words, on first use. Join the
    thread before the process exits: an interpreter that shuts down while onnxruntime loads
    aborts in C++ (see `tasks.search.DocumentSearch.settle`)."""
    if not isinstance(embedder, LocalOnnxEmbedder):
        return None

    def load() -> None:
        with contextlib.suppress(Exception):
            embedder.load()
            if then is not None:
                then()

    thread = threading.Thread(target=load, name="load-embedder", daemon=True)
    thread.start()
    return thread


def build_embedder(settings: Settings, *, threads: int | None = None) -> Embedder:
    """The embedder the settings ask for; `threads`: the local model's (default: the cores)."""
    if settings.embedding_engine == "openai":
        return OpenAIEmbedder.from_settings(settings)
    embedder = LocalOnnxEmbedder(settings.embedding_model_dir, threads=threads)
    embedder.check_files()
    # On a Dask worker: the same model folder, that machine's cores.
    return make_portable(embedder, LocalOnnxEmbedder, settings.embedding_model_dir)


# A paragraph of ordinary prose, the calibration text of `chars_per_second`.
_CALIBRATION = (
    "The team reviewed the quarterly plan and agreed to move the release by two weeks, because "
    "the new storage layer still fails under load. Each owner will write down the open risks, "
    "the tests that cover them and the date by which a fix is expected. Support asked for a "
    "short guide that explains the change to customers before it ships. "
)


def chars_per_second(embedder: Embedder, texts: int = 8, chars: int = 1200) -> float:
    """How many characters of prose `embedder` embeds per second here, timed on `texts` texts
    of about `chars` characters (a document chunk): under a second of a loaded local model,
    for an estimate of the time an ingest will take before it starts.

    Timed in the CPU time of this thread, not the wall: the estimate is made while a Prefect
    server starts beside it, and the wall then said a fifth of the real speed (5.8k vs ~30k
    chars/s); onnxruntime's calling thread works the whole call, so its CPU time is the
    wall the call takes on cores of its own (24-25k chars/s with 3 busy processes beside it,
    21-31k without). The better of two timings: the first ones after a load are slower."""
    import time

    prose = _CALIBRATION * (chars // len(_CALIBRATION) + 2)
    sample = [prose[i : i + chars] for i in range(texts)]  # distinct texts, one length
    best = 0.0
    for _ in range(2):
        started = time.thread_time()
        embedder.embed(sample)
        best = max(best, sum(map(len, sample)) / max(time.thread_time() - started, 1e-6))
    return best
