"""A deterministic embedder for unit tests: no model files, no network, same text -> same vector."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from tasks.embeddings import Vectors

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Hashed bag of words, L2-normalised: texts that share words get similar vectors.

    Records every call in `calls` (the list of texts of each call) so tests can assert what was
    embedded, and how often.
    """

    def __init__(self, dimension: int = 64, name: str = "hash-embedder") -> None:
        self.name = name
        self._dimension = dimension
        self.calls: list[list[str]] = []

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def texts_embedded(self) -> int:
        return sum(len(call) for call in self.calls)

    def embed(self, texts: list[str]) -> Vectors:
        self.calls.append(list(texts))
        vectors = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()) or [""]:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dimension
                vectors[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = float(np.linalg.norm(vectors[row]))
            if norm == 0.0:
                vectors[row, 0] = 1.0
            else:
                vectors[row] /= norm
        return vectors
