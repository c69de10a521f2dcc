"""Ingest progress between whole document batches, and the bar that shows it."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

from pipelines.console import ProgressBar, _time_left
from pipelines.run_context import run_context
from tasks.chroma_client import open_chroma
from tasks.documents import discover_documents
from tasks.embeddings import LocalOnnxEmbedder, chars_per_second
from tasks.ingestion import ingest_files
from tasks.ingestion.progress import IngestProgress, embed_in_parts
from tasks.model_files import provision_embedding_model
from tasks.reporting import Progress, RunProgress
from tasks.settings import Settings
from tasks.vectorstore import ChunkStore
from tests.support.embedders import HashEmbedder

TOPICS = ["travel", "expenses", "laptops", "canteen", "parking", "security", "holidays"]


@pytest.fixture(scope="module")
def local_embedder(tmp_path_factory: pytest.TempPathFactory) -> LocalOnnxEmbedder:
    model_dir = provision_embedding_model(tmp_path_factory.mktemp("models") / "minilm")
    return LocalOnnxEmbedder(model_dir, batch_size=4)


def write_documents(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for n in range(count):
        topic = TOPICS[n % len(TOPICS)]
        paragraphs = [
            f"Note {n} on {topic}, paragraph {p}: the {topic} rules changed in week {n + p}; "
            f"ask the {topic} desk before day {p + 3} of the month."
            for p in range(4)
        ]
        (folder / f"note-{n:03}.md").write_text(f"# {topic} {n}\n\n" + "\n\n".join(paragraphs))
    return folder


def test_progress_moves_within_a_batch_and_ends_at_the_report_totals(
    tmp_path: Path, local_embedder: LocalOnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.ingestion.driver

    monkeypatch.setattr(tasks.ingestion.driver, "DOCUMENTS_PER_BATCH", 6)
    docs = write_documents(tmp_path / "docs", 20)  # batches of 6, 6, 6, 2
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        doc_chunk_tokens=50,
        doc_chunk_overlap_tokens=0,
    )
    store = ChunkStore(open_chroma(settings), "docs", local_embedder.name, local_embedder.dimension)
    progress: list[Progress] = []
    first_batch_ended: list[int] = []

    def on_progress(update: Progress) -> None:
        if update.done > 0 and not first_batch_ended:
            first_batch_ended.append(len(progress))
        progress.append(update)

    report = ingest_files(
        discover_documents([docs]), store, local_embedder, settings, on_progress=on_progress
    )
    assert report.added == 20 and report.embeddings_computed == report.chunks_written > 40

    before = progress[: first_batch_ended[0]]
    assert [p.done for p in before] == [0] * len(before)
    embedded_before = [p.parts_done for p in before]
    assert len(set(embedded_before)) > 2, embedded_before  # several sub-batches of 4 reported
    assert any(0 < p.completed < 6 for p in before)  # the bar moved inside the first batch

    for name in ("done", "parts_done", "parts_known", "completed"):
        values = [getattr(p, name) for p in progress]
        assert values == sorted(values), name
    assert all(p.parts_done <= p.parts_known and p.total == 20 for p in progress)
    last = progress[-1]
    assert (last.done, last.completed) == (20, 20)
    assert last.parts_done == last.parts_known == report.embeddings_computed


def test_a_batch_with_nothing_to_embed_ends_before_an_earlier_one_that_has_not_begun() -> None:
    heard: list[Progress] = []
    progress = IngestProgress(2, heard.append)
    first, unchanged = progress.batch(1), progress.batch(1)  # equal counts: (1 document, 0, 0)
    progress.batch_done(unchanged)
    progress.texts_known(first, ["new text"])
    assert heard[-1].completed == 1  # the first batch's share is still counted
    progress.texts_embedded(first, ["new text"])
    progress.batch_done(first)
    assert heard[-1] == Progress(2, 2, 1, 1, 2.0)


def test_a_second_run_with_nothing_to_embed_still_counts_documents(tmp_path: Path) -> None:
    docs = write_documents(tmp_path / "docs", 5)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    embedder = HashEmbedder()
    store = ChunkStore(open_chroma(settings), "docs", embedder.name, embedder.dimension)
    ingest_files(discover_documents([docs]), store, embedder, settings)
    progress: list[Progress] = []
    ingest_files(discover_documents([docs]), store, embedder, settings, on_progress=progress.append)
    assert [(p.done, p.parts_known) for p in progress] == [(0, 0), (5, 0)]


def test_embedding_in_parts_gives_the_vectors_of_one_call(
    local_embedder: LocalOnnxEmbedder,
) -> None:
    texts = [f"{'word ' * (n % 7 + 1)}number {n}" for n in range(11)]
    parts: list[int] = []
    vectors = embed_in_parts(local_embedder, texts, lambda part: parts.append(len(part)))
    assert parts == [4, 4, 3]
    assert np.allclose(vectors, local_embedder.embed(texts), atol=1e-5)


def test_the_bar_shows_documents_chunks_elapsed_and_time_left_from_its_first_move() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    bar = ProgressBar(enabled=True, console=console)
    bar.start("documents", parts=("chunk embedded", "chunks embedded"))
    bar.update(Progress(0, 200))
    bar.update(Progress(0, 200, 0, 150))  # the first chunks handed to the embedder
    bar.update(Progress(0, 200, 0, 290))  # a second batch's: the clock does not restart
    bar.update(Progress(0, 200, 16, 290, 3.2))  # one move
    bar.stop()  # a last refresh, then the transient bar is erased: its text stays in the file
    last = Text.from_ansi(out.getvalue()).plain.rsplit("documents", 1)[-1]
    assert "0/200 · 16/290 chunks embedded" in last, last
    assert "elapsed 0:00:00" in last and "left" in last
    assert "-:--:--" not in last, last  # an estimate after one move


def test_before_the_work_begins_the_bar_shows_the_estimate_then_the_measured_pace(
    local_embedder: LocalOnnxEmbedder,
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    bar = ProgressBar(enabled=True, console=console)
    bar.estimate(130.0)  # from the loading thread, before the bar starts
    bar.start("documents", parts=("chunk embedded", "chunks embedded"))
    bar.update(Progress(0, 200))
    console.print(bar._progress)
    assert "~0:02:10" in Text.from_ansi(out.getvalue()).plain
    bar.update(Progress(0, 200, 16, 290, 3.2))  # the first move: the measured pace from now on
    bar.stop()
    last = Text.from_ansi(out.getvalue()).plain.rsplit("documents", 1)[-1]
    assert "~" not in last and "-:--:--" not in last, last
    # the rate the estimate divides by is measured, on the real model: a positive number
    assert chars_per_second(local_embedder) > 0


def test_time_left_is_the_pace_since_the_work_began() -> None:
    task = SimpleNamespace(fields={"began": 10.0}, completed=25.0, total=100, get_time=lambda: 20.0)
    assert _time_left(task) == 30.0
    task.fields = {"began": None}
    task.time_remaining = 7.0  # rich's own, without a start
    assert _time_left(task) == 7.0


def test_chunks_all_known_done_read_as_a_count_and_no_bar_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bar = ProgressBar(enabled=True, console=Console(file=io.StringIO()))
    bar.start("transcripts", parts=("chunk", "chunks"))
    assert bar.counts(Progress(3, 4, 12, 12)) == "3/4 · 12 chunks"
    assert bar.counts(Progress(1, 4, 1, 1)) == "1/4 · 1 chunk"
    assert bar.counts(Progress(3, 4)) == "3/4"
    piped = ProgressBar(enabled=True)  # pytest's stderr is not a terminal
    piped.start("documents", parts=("chunk embedded", "chunks embedded"))
    piped.update(Progress(1, 2, 5, 9, 1.5))
    piped.stop()
    assert capsys.readouterr().err == ""


def test_the_flow_moves_the_run_progress_artifact_at_most_once_a_second(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.artifacts
    from prefect.artifacts import Artifact

    import tasks.ingestion.driver
    from pipelines.ingest import PROGRESS_ARTIFACT_KEY, ingest_documents

    updates: list[float] = []
    real_update = prefect.artifacts.update_progress_artifact

    def recording(artifact_id: object, progress: float, **kwargs: object) -> object:
        updates.append(progress)
        return real_update(artifact_id, progress, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", recording)
    monkeypatch.setattr(tasks.ingestion.driver, "DOCUMENTS_PER_BATCH", 1)
    docs = write_documents(tmp_path / "docs", 12)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    heard: list[Progress] = []
    started = time.monotonic()
    with run_context(settings=settings, embedder=HashEmbedder(), on_progress=heard.append):
        state = ingest_documents(paths=[str(docs)], collection="progress-docs", return_state=True)
    took = time.monotonic() - started
    assert state.is_completed()
    assert len(heard) > 12 * 3  # every batch: its texts known, embedded, done
    assert updates == sorted(updates) and updates[-1] == 100.0
    assert len(updates) <= took / RunProgress.ARTIFACT_EVERY_S + 2, (updates, took)
    artifact = Artifact.get(PROGRESS_ARTIFACT_KEY)
    assert artifact is not None and getattr(artifact, "data", None) == 100.0
