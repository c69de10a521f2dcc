"""Reports that hold across crashes: ingest killed with SIGKILL at several points, then resumed.

Whatever a killed run left in the store, the resume gives every file the verdict a clean run
gives it (indexed, skipped and why, quarantined and why), the collection ends with exactly a
clean run's ids, and the next unchanged run reports what a clean run's next run reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.chroma_client import open_chroma
from tasks.documents import discover_documents
from tasks.ingestion import IngestReport, ingest_files
from tasks.vectorstore import ChunkStore
from tests.support import ingest_child
from tests.support.embedders import HashEmbedder

REPO = Path(__file__).resolve().parents[3]

PARAGRAPH = (
    "Section {n} of the {name} guide explains how the team books travel, files receipts and "
    "asks for approval. It names the people to ask and the forms to use for each case."
)


def page(name: str, sections: int = 3, edit: str = "") -> str:
    body = "\n\n".join(
        f"## Part {n}\n\n{PARAGRAPH.format(n=n, name=name)}{edit}" for n in range(sections)
    )
    return f"---\ntitle: {name}\n---\n\n# {name}\n\n{body}\n"


def write_corpora(root: Path) -> tuple[Path, Path]:
    """`before`, then `after`: the same tree edited, grown, shrunk, with empty and bad files."""
    before, after = root / "before", root / "after"
    for folder in (before, after):
        (folder / "guides").mkdir(parents=True)
        for n in range(6):
            (folder / "guides" / f"guide-{n}.md").write_text(page(f"guide {n}"))
    (before / "edited.md").write_text(page("edited"))
    (after / "edited.md").write_text(page("edited", edit=" Updated in March."))
    (before / "gone.md").write_text(page("gone"))
    (before / "emptied.md").write_text(page("emptied"))
    (after / "emptied.md").write_text("---\ntitle: emptied\n---\n")
    for n in range(3):
        (after / f"new-{n}.md").write_text(page(f"new {n}", sections=4))
    (after / "api").mkdir()
    (after / "api" / "client.md").write_text("---\ntitle: Client\nsidebar: 2\n---\n")
    (after / "api" / "index.md").write_text("---\ntitle: API\n---\n\n# API\n\n## Classes\n")
    (after / "empty.md").write_text("")
    (after / "blank.txt").write_text("  \n\n")
    (after / "binary.txt").write_bytes(b"\x00\x01 not text")
    (after / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (after / "broken.jsonl").write_text('{"text": "fine"}\nnot json\n')
    return before, after


def open_store(data_dir: Path) -> tuple[ChunkStore, HashEmbedder, Any]:
    settings = ingest_child.settings_for(data_dir)
    embedder = HashEmbedder()
    store = ChunkStore(
        open_chroma(settings), ingest_child.COLLECTION, embedder.name, embedder.dimension,
        max_batch_size=ingest_child.WRITE_BATCH,
    )  # fmt: skip
    return store, embedder, settings


def ingest(data_dir: Path, docs: Path) -> IngestReport:
    store, embedder, settings = open_store(data_dir)
    return ingest_files(discover_documents([docs]), store, embedder, settings, cleanup="full")


def verdicts(report: IngestReport) -> dict[str, Any]:
    """What a run says about the files, apart from the work it saved by finding it done."""
    return {
        "indexed": report.added + report.updated + report.unchanged,
        "deleted": report.deleted,
        "skipped": {s.source: s.reason for s in report.skipped_documents},
        "quarantined": {q.source: q.reason for q in report.quarantine},
        "collection_count": report.collection_count,
    }


def ids(data_dir: Path) -> set[str]:
    store, _, _ = open_store(data_dir)
    return set(store.collection.get(include=[])["ids"])


@pytest.fixture
def per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.ingestion.driver

    monkeypatch.setattr(
        tasks.ingestion.driver, "DOCUMENTS_PER_BATCH", ingest_child.DOCUMENTS_PER_BATCH
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # 47-120 s beside the suite on 2 cores; 300 s was hit at load 12
def test_a_run_killed_anywhere_resumes_to_a_clean_runs_verdicts_and_ids(
    tmp_path: Path, per_batch: None
) -> None:
    before, after = write_corpora(tmp_path)
    clean_dir = tmp_path / "clean"
    ingest(clean_dir, before)
    clean = ingest(clean_dir, after)
    clean_again = ingest(clean_dir, after)
    assert (clean.added, clean.updated, clean.unchanged, clean.deleted) == (3, 1, 6, 1)
    assert (clean.skipped, clean.quarantined) == (5, 3)
    assert clean_again.counts() == {
        **{key: 0 for key in clean.counts()},
        "unchanged": 10,
        "skipped": 5,
        "quarantined": 3,
        "collection_count": clean.collection_count,
    }
    clean_ids = ids(clean_dir)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The second run embeds 3 times, writes in 6 calls, deletes in 3 (a stale chunk, an emptied
    # page, the page that is gone) and remembers left-out files in 5: mid-embed, mid-write,
    # between upsert and stale delete, before the full cleanup, and between two batches'
    # remembered verdicts.
    for point, nth in [
        ("embed", 2),
        ("upsert", 2),
        ("upsert", 5),
        ("delete", 1),
        ("delete", 3),
        ("left-out-upsert", 2),
    ]:
        data_dir = tmp_path / f"killed-{point}-{nth}"
        child = subprocess.run(
            [sys.executable, "-m", "tests.support.ingest_child", str(data_dir), str(before),
             str(after), point, str(nth)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert child.returncode == -signal.SIGKILL, (point, nth, child.stderr[-2000:])

        resumed = ingest(data_dir, after)
        assert verdicts(resumed) == verdicts(clean), (point, nth)
        assert ids(data_dir) == clean_ids, (point, nth)
        again = ingest(data_dir, after)
        assert again.counts() == clean_again.counts(), (point, nth)
        assert verdicts(again) == verdicts(clean_again), (point, nth)
