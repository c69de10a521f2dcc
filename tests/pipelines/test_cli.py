"""Command-line plumbing that needs no flow run: where Prefect's state goes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.environment import prepare_prefect
from tasks.settings import Settings
from tests.conftest import REPO
from tests.support.prefect_db import seed_prefect_database


def test_runs_without_a_server_land_in_the_database_gristmill_server_serves(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_API_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir))  # type: ignore[call-arg]
    database = (data_dir / "prefect" / "prefect.db").resolve()
    assert database.parent.is_dir()
    assert os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{database}"


def test_a_configured_server_or_database_is_left_alone(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir))  # type: ignore[call-arg]
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in os.environ

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    prepare_prefect(Settings(_env_file=None, data_dir=data_dir))  # type: ignore[call-arg]
    assert os.environ["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql")


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f"GRISTMILL_{name.upper()}"
        for name in Settings.model_fields
        if f"GRISTMILL_{name.upper()}` |" not in readme  # also `OPENAI_API_KEY / GRISTMILL_...`
    ]
    assert not missing, f"document these in README.md's Configuration table: {missing}"


def test_schedule_time_zone_comes_from_settings_and_bad_names_get_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    assert Settings(_env_file=None, schedule_timezone="Europe/Berlin").schedule_timezone  # type: ignore[call-arg]
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--timezone", "Nowhere/Land"])
    assert result.exit_code == 2
    assert "'Nowhere/Land' is not an IANA time zone name" in result.output
    monkeypatch.setenv("GRISTMILL_SCHEDULE_TIMEZONE", "Mars/Olympus")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "invalid setting GRISTMILL_SCHEDULE_TIMEZONE" in result.output
    assert "Traceback" not in result.output


def run_cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`gristmill ARGS` as a user runs it: a subprocess with Prefect's own console logging,
    none of this process's PREFECT_/GRISTMILL_ settings, a temporary Prefect server of its own
    (GRISTMILL_SERVER=ephemeral: nothing left running), and `env` on top."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    seed_prefect_database(data_dir / "prefect")
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env={
            **clean,
            "GRISTMILL_DATA_DIR": str(data_dir),
            "GRISTMILL_SERVER": "ephemeral",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_store_error_inside_a_flow_is_one_line_on_a_real_terminal(tmp_path: Path) -> None:
    """Run as a user does (a subprocess, Prefect's own console logging): no traceback."""
    from tests.support.chroma_process import free_port

    result = run_cli(
        "ingest",
        str(REPO / "data" / "documents"),
        data_dir=tmp_path,
        GRISTMILL_MODEL_DIR=str(REPO / "data" / "models" / "all-MiniLM-L6-v2"),
        GRISTMILL_CHROMA_HOST="127.0.0.1",
        GRISTMILL_CHROMA_PORT=str(free_port()),  # nothing listens there
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot reach" in line]
    assert len(errors) == 1 and errors[0].startswith("gristmill: error: cannot reach the Chroma")
    assert "Traceback" not in result.stderr + result.stdout


def test_an_output_format_we_cannot_write_is_one_line_before_any_work(tmp_path: Path) -> None:
    """As a user runs it (a subprocess, Prefect's console logging on): one line, exit 2."""
    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,hello there\n")
    result = run_cli(
        "batch", str(source), "-o", str(tmp_path / "out.txt"), "--task", "summarize",
        data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "unknown table format" in line]
    assert lines == [
        f"gristmill: error: {tmp_path / 'out.txt'}: unknown table format '.txt' "
        "(use .csv, .jsonl (.ndjson) or .parquet)"
    ]
    assert not (tmp_path / "out.txt").exists()


def test_a_bad_transcript_is_its_reason_on_the_terminal_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01binary")
    result = run_cli("summarize", str(tmp_path / "bin.txt"), "--json", data_dir=tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "NUL byte" not in result.stderr  # said once, in the report, not in log lines too
    report = json.loads(result.stdout)
    assert report["transcripts"][0]["error"].startswith("binary content: NUL byte")


def test_own_errors_lose_their_traceback_only_on_the_terminal() -> None:
    import logging

    from tasks.errors import InputError
    from tasks.reporting import _OwnErrorsInWords

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.texts: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.texts.append(self.format(record))

    run_logger = logging.getLogger("gristmill-test.task_runs")
    api, terminal = Keep(), Keep()  # as Prefect's API handler on the run logger, console on root
    terminal.addFilter(_OwnErrorsInWords())
    run_logger.addHandler(api)
    parent = logging.getLogger("gristmill-test")
    parent.addHandler(terminal)
    try:
        for error in (InputError("binary content"), KeyError("a bug")):
            try:
                raise error
            except Exception:
                run_logger.error("Task run failed with exception: %r", error, exc_info=True)
    finally:
        run_logger.removeHandler(api)
        parent.removeHandler(terminal)
    assert all("Traceback" in text for text in api.texts)  # the UI keeps the details
    assert "Traceback" not in terminal.texts[0]  # our error: its words only
    assert "Traceback" in terminal.texts[1]  # anything else is a bug: keep the traceback


def test_a_reason_that_spans_lines_is_still_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Prefect's message for parameters it refused has a line per parameter (see
    tests/pipelines/test_run_context.py); the CLI's error stays one line."""
    from pipelines.console import fail

    message = (
        "Validation of flow parameters failed with error: ParameterTypeError: Flow run "
        "received invalid parameters:\n - shards: Input should be a valid integer"
    )
    with pytest.raises(SystemExit) as exited:
        fail(f"the run did not finish: {message}", 1)
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "gristmill: error: the run did not finish: Validation of flow parameters failed with "
        "error: ParameterTypeError: Flow run received invalid parameters: - shards: Input "
        "should be a valid integer"
    ]


def test_a_failed_item_is_printed_once_in_words_and_piped_tables_are_plain_lines(
    tmp_path: Path,
) -> None:
    long_folder = tmp_path / ("a-folder-with-a-name-long-enough-to-wrap-an-80-column-table" * 2)
    long_folder.mkdir()
    (long_folder / "empty.txt").write_bytes(b"")
    shutil.copy(REPO / "data" / "transcripts" / "weekly-standup.txt", long_folder)
    result = run_cli("summarize", str(long_folder), data_dir=tmp_path / "data")
    assert result.returncode == 1, result.stderr
    both = result.stdout + result.stderr
    assert both.count("file is empty (0 bytes)") == 1, both
    assert "ERROR" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2 transcripts: 1 summarised, 0 unchanged, 1 failed"
    assert lines[1].split("\t") == [
        "Transcript",
        "Status",
        "Chunks",
        "LLM calls",
        "Output / reason",
    ]
    [failed] = [line.split("\t") for line in lines if line.endswith("file is empty (0 bytes)")]
    assert failed[0].endswith("empty.txt") and failed[1] == "failed"
    assert not any(c in result.stdout for c in "│┃━")  # no box drawing in a CI log


def test_outputs_honour_the_umask(tmp_path: Path) -> None:
    from tasks.reporting import file_mode, write_atomically

    file_mode.cache_clear()
    previous = os.umask(0o027)
    try:
        write_atomically(tmp_path / "summary.md", "text")
        assert (tmp_path / "summary.md").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
        file_mode.cache_clear()
    write_atomically(tmp_path / "other.md", "text")
    assert (tmp_path / "other.md").stat().st_mode & 0o777 == 0o666 & ~previous


def test_help_keeps_its_defaults_and_there_is_a_version_and_completion(tmp_path: Path) -> None:
    summarize = run_cli("summarize", "--help", data_dir=tmp_path, COLUMNS="200")
    assert summarize.returncode == 0
    assert "<data_dir>/transcripts" in summarize.stdout
    assert "Transcript files or folders." in summarize.stdout
    version = run_cli("--version", data_dir=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("gristmill 0.")
    top = run_cli("--help", data_dir=tmp_path, COLUMNS="200")
    assert "--install-completion" in top.stdout
    stop = run_cli("server", "--help", data_dir=tmp_path, COLUMNS="200")
    assert "stop" in stop.stdout and "--port" in stop.stdout


@pytest.mark.parametrize("flag", ["--out", "-o"])  # -o as in `batch`
def test_an_output_folder_that_is_the_input_folder_is_one_line_before_any_work(
    tmp_path: Path, flag: str
) -> None:
    folder = tmp_path / "meetings"
    folder.mkdir()
    (folder / "notes.md").write_text("Alice: We ship on Friday.\nBob: I write the notes.\n")
    result = run_cli("summarize", str(folder), flag, str(folder), data_dir=tmp_path / "data")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines()[-1] == (
        f"gristmill: error: the output folder {folder} is the input {folder}; write summaries"
        " to a folder of their own (it may lie inside the input folder)"
    )
    assert [p.name for p in folder.iterdir()] == ["notes.md"]
