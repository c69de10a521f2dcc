"""`gristmill ingest` on a generated docs tree (tests/support/docs_tree.py): Markdown and MDX
pages, code, tables, stubs with only front matter, blank and binary files. Every file is
accounted for once with the right verdict, and an unchanged re-run says the same and embeds
nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.docs_tree import INDEXED, build_tree
from tests.support.openai_server import FakeOpenAI

KEY = "sk-test-docs-tree-0123456789"


def ingest(tree_root: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["ingest", str(tree_root), "--cleanup", "full", "--json"])
    assert result.exit_code == 1, result.output  # the binary page is quarantined
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What a run says about the files, apart from the work it saved by finding it done."""
    return {
        "indexed": report["added"] + report["updated"] + report["unchanged"],
        "skipped": {s["source"]: s["reason"] for s in report["skipped_documents"]},
        "quarantined": sorted(q["source"] for q in report["quarantine"]),
        "collection_count": report["collection_count"],
    }


def test_every_file_of_a_docs_tree_is_accounted_for_once_and_a_rerun_agrees(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = build_tree(tmp_path / "docs", files=40, seed=3)
    with FakeOpenAI(api_key=KEY, embedding_dim=1536) as server:
        monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("GRISTMILL_EMBEDDING_ENGINE", "openai")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)

        first = ingest(tree.root)
        calls = server.calls
        again = ingest(tree.root)

    assert first["added"] == tree.count(INDEXED) and first["updated"] == first["unchanged"] == 0
    assert {s["source"]: s["reason"] for s in first["skipped_documents"]} == tree.skipped()
    assert first["skipped"] == len(tree.skipped())
    assert {q["source"]: q["reason"][: len(why)] for q in first["quarantine"] for why in
            [tree.quarantined().get(q["source"], "")]} == tree.quarantined()  # fmt: skip
    assert first["added"] + first["skipped"] + first["quarantined"] == len(tree.files) == 40
    assert first["embeddings_computed"] > 0 and first["collection_count"] > 0

    assert verdicts(again) == verdicts(first)
    assert again["unchanged"] == first["added"] and again["added"] == 0
    assert again["embeddings_computed"] == again["chunks_written"] == 0
    assert server.calls == calls  # nothing sent to the embedder

    from tasks.chroma_client import open_chroma
    from tasks.settings import Settings

    collection = open_chroma(Settings(data_dir=tmp_path / "data")).get_collection(
        first["collection"]
    )
    stored = collection.get(include=["documents", "metadatas"])
    texts = stored["documents"] or []
    assert len(texts) == first["collection_count"]
    assert not any("@theme/Tabs" in t or "<TabItem" in t or "<Callout" in t for t in texts)
    formats = {m["format"] for m in stored["metadatas"] or []}
    assert formats == {"markdown", "mdx"}
