"""Commands pay only for what they use: none imports a heavy library it does not need.

Checked in a fresh interpreter per command (what a user's shell runs), by the modules it
loaded, not by timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

HEAVY = (
    "great_expectations",
    "pandas",
    "chromadb",
    "openai",
    "prefect",
    "prefect.server",
    "dask",
    "distributed",
)

_PROBE = """
import atexit, json, sys
heavy = json.loads(sys.argv[1])
atexit.register(lambda: print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr))
sys.argv = ["gristmill", *sys.argv[2:]]
from pipelines.cli import main
main()
"""


def loaded(*args: str, data_dir: Path) -> set[str]:
    """The heavy modules `gristmill ARGS` imported."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRISTMILL_"))}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), *args],
        cwd=REPO,
        env={**clean, "GRISTMILL_DATA_DIR": str(data_dir), "GRISTMILL_SERVER": "ephemeral"},
        stdin=subprocess.DEVNULL,  # `query --queries -` reads an empty file, not the terminal
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("--help",), set()),
        (("summarize", "--help"), set()),
        (("server", "stop"), set()),
        (("doctor",), set()),
        # a search needs the vector store, not Prefect, pandas, GX or an LLM client
        (("query", "travel policy"), {"chromadb"}),
        (("query", "--queries", "-"), {"chromadb"}),
        (("api", "--help"), set()),
        (("mcp", "--help"), set()),
    ],
    ids=["help", "summarize-help", "server-stop", "doctor", "query", "queries", "api", "mcp"],
)
def test_a_command_imports_only_the_heavy_libraries_it_uses(
    args: tuple[str, ...], allowed: set[str], data_dir: Path
) -> None:
    assert loaded(*args, data_dir=data_dir) <= allowed


def test_the_quality_checks_can_be_imported_ahead_in_the_background() -> None:
    script = (
        "import sys\n"
        "from tasks import quality\n"
        "assert 'great_expectations' not in sys.modules\n"
        "quality.preload().join(timeout=120)\n"
        "assert 'great_expectations' in sys.modules\n"
        "assert quality._context.cache_info().currsize == 1  # the context is built once\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
