"""A collection-wide lexical index kept in step with the Chroma chunks: SQLite FTS5 with BM25.

Dense retrieval finds paraphrases; exact words (names, numbers, jargon) are what it misses. The
embedder's nearest chunks re-ranked by BM25 only ever see what the embedder already found, so
every chunk of the collection goes into a full-text index as well, and a query fuses the two
rankings (`pipelines.ask.query_chunks`). Chosen by measurement on QMSum validation
(benchmarks/retrieval_collection.py, figures in benchmarks/README.md).

Why SQLite FTS5: it is in Python's standard library, writes incrementally (an upsert or delete
of one document's chunks is one transaction, no rebuild), is crash-safe (a transaction either
lands or does not), ranks with BM25 (`bm25()`, Lucene's k1 = 1.2, b = 0.75) and stems English
with the Porter stemmer, and several processes can read and write it at once.

What is indexed is what is embedded: the chunk's context line (`tasks.documents.DocChunk.context`,
kept in its metadata) and its text (`tasks.vectorstore.indexed_text`), so a repair from Chroma
indexes the same words.

Kept in step: `ChunkStore.upsert` and `ChunkStore.delete_ids` write here in the same call as
they write Chroma. A crash between the two (or a collection written by another machine through a
Chroma server) leaves the index behind; a write marks the index dirty until both stores are
written, and `sync` repairs it from Chroma (the source of truth) when it is dirty or holds a
different number of chunks. Beside an on-disk Chroma the index lives in the same folder; with a
Chroma server each client keeps its own copy under its data folder, repaired the same way.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tasks.settings import Settings

# English stop words left out of queries (Lucene's list, as bm25s and tasks.hybrid use): they
# match nearly every chunk, add nothing to BM25's ranking and slow an OR query down.
_STOPWORDS = """a an and are as at be but by for if in into is it no not of on or such that the
their then there these they this to was will with"""
STOPWORDS = frozenset(_STOPWORDS.split())


class ChunkSource(Protocol):
    """What `sync` reads from the chunk collection (a `tasks.vectorstore.ChunkStore`), declared
    here so that the index and the store, which writes the index, do not import each other."""

    def count(self) -> int: ...

    def all_ids(self) -> set[str]: ...

    def texts(
        self, ids: Sequence[str], *, indexed: bool = False
    ) -> Iterator[tuple[str, str, str]]: ...


_TOKEN = re.compile(r"\w+", re.UNICODE)
# Query terms at most: a pasted paragraph is not a sensible OR query of 500 terms.
MAX_QUERY_TERMS = 64
# Rows per statement when writing or syncing.
WRITE_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_source ON chunk (source);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_fts USING fts5 (
    text, content = 'chunk', content_rowid = 'n', tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunk_added AFTER INSERT ON chunk BEGIN
    INSERT INTO chunk_fts (rowid, text) VALUES (new.n, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunk_removed AFTER DELETE ON chunk BEGIN
    INSERT INTO chunk_fts (chunk_fts, rowid, text) VALUES ('delete', old.n, old.text);
END;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def query_terms(text: str) -> list[str]:
    """The distinct words of `text` a search looks for, in order (stop words left out)."""
    seen: dict[str, None] = {}
    for word in _TOKEN.findall(text.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
    return list(seen)[:MAX_QUERY_TERMS]


class LexicalIndex:
    """BM25 over every chunk of one collection, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write to Chroma and this index: marked dirty until both are done, so a crash
        in between is found and repaired by the next `sync`."""
        self._set("dirty", 1)
        yield
        self._set("dirty", 0)

    def upsert(self, ids: Sequence[str], sources: Sequence[str], texts: Sequence[str]) -> None:
        """Insert or replace chunks by id."""
        rows = list(zip(ids, sources, texts, strict=True))
        with self._lock, self._db:
            for start in range(0, len(rows), WRITE_BATCH):
                batch = rows[start : start + WRITE_BATCH]
                self._delete([row[0] for row in batch])
                self._db.executemany("INSERT INTO chunk (id, source, text) VALUES (?, ?, ?)", batch)

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock, self._db:
            for start in range(0, len(ids), WRITE_BATCH):
                self._delete(list(ids[start : start + WRITE_BATCH]))

    def _delete(self, ids: list[str]) -> None:
        marks = ",".join("?" * len(ids))
        self._db.execute(f"DELETE FROM chunk WHERE id IN ({marks})", ids)

    def _set(self, key: str, value: int) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value)
            )

    # -- reading -------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunk").fetchone()[0])

    def dirty(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = 'dirty'").fetchone()
        return bool(row and row[0])

    def ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM chunk")}

    def search(self, text: str, k: int, source: str | None = None) -> list[tuple[str, float]]:
        """The `k` best chunks for `text` by BM25, best first, as (id, score); score is
        positive, larger is better. A chunk needs one of the query's words to be found."""
        terms = query_terms(text)
        if not terms or k <= 0:
            return []
        # each term quoted: FTS5 query syntax (AND, NEAR, "-", ":") in the user's text is text
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        if source is None:
            # Ranked inside the full-text table, joined to the ids only for the best k: the
            # same rows as joining first, ~35 % faster at 10k chunks (18.9 -> 12.4 ms median
            # over 300 QMSum questions), as SQLite then sorts bare rowids.
            sql = (
                "SELECT chunk.id, score FROM (SELECT rowid AS n, bm25(chunk_fts) AS score"
                " FROM chunk_fts WHERE chunk_fts MATCH ? ORDER BY score, n LIMIT ?)"
                " JOIN chunk USING (n) ORDER BY score, n"
            )
            arguments: list[object] = [match, k]
        else:
            sql = (
                "SELECT chunk.id, bm25(chunk_fts) AS score FROM chunk_fts"
                " JOIN chunk ON chunk.n = chunk_fts.rowid WHERE chunk_fts MATCH ?"
                " AND chunk.source = ? ORDER BY score, chunk.n LIMIT ?"
            )
            arguments = [match, source, k]
        with self._lock:
            rows = self._db.execute(sql, arguments).fetchall()
        return [(row[0], -float(row[1])) for row in rows]

    # -- repair --------------------------------------------------------------------------

    def sync(self, store: ChunkSource) -> int:
        """Bring the index in step with `store` when it may be behind (dirty, or a different
        number of chunks); returns how many chunks were added or removed."""
        if not self.dirty() and self.count() == store.count():
            return 0
        return self.rebuild_from(store)

    def rebuild_from(self, store: ChunkSource) -> int:
        """Make the index hold exactly the store's chunks (only the difference is written)."""
        held = self.ids()
        present = store.all_ids()
        gone = sorted(held - present)
        missing = sorted(present - held)
        self.delete(gone)
        for ids, sources, texts in _batches(store.texts(missing, indexed=True)):
            self.upsert(ids, sources, texts)
        self._set("dirty", 0)
        return len(gone) + len(missing)


def _batches(
    rows: Iterable[tuple[str, str, str]],
) -> Iterator[tuple[list[str], list[str], list[str]]]:
    batch: list[tuple[str, str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == WRITE_BATCH:
            yield _columns(batch)
            batch = []
    if batch:
        yield _columns(batch)


def _columns(batch: list[tuple[str, str, str]]) -> tuple[list[str], list[str], list[str]]:
    return [r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]


def lexical_path(settings: Settings, collection: str) -> Path:
    """Where a collection's index lives: beside an on-disk Chroma, or (Chroma server) in this
    client's data folder, one folder per server."""
    if settings.chroma_host:
        server = re.sub(r"[^\w.-]", "_", f"{settings.chroma_host}-{settings.chroma_port}")
        return settings.data_dir / "lexical" / server / f"{collection}.sqlite3"
    return settings.chroma_dir / "gristmill-lexical" / f"{collection}.sqlite3"


def open_lexical(settings: Settings, collection: str) -> LexicalIndex:
    return LexicalIndex(lexical_path(settings, collection))
