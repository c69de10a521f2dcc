"""MDX pages: the prose and code a reader sees are indexed; ESM, JSX tags and comments are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.documents import chunk_document, discover_documents, load_document
from tasks.documents.mdx_text import mdx_markdown
from tasks.errors import NothingToIndex

PAGE = """---
title: "Install: the CLI"
sidebar_position: 2
tags: [cli, install]
---

import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';
import {
  Callout,
  Diagram,
} from '@site/src/components';
export const meta = {
  owner: 'docs',
};

# Install the CLI

Install it with your package manager. Press <kbd>Ctrl</kbd>+<kbd>C</kbd> to stop; write
`<Tabs>` in code.

{/* TODO: Windows */}

<Tabs groupId="os" values={[{label: 'Linux', value: 'linux'}, {label: 'a > b', value: 'mac'}]}>
  <TabItem value="linux" label="Linux">
    Run the installer as root.

    ```bash
    sudo apt install canopy
      --yes
    ```
  </TabItem>
  <TabItem value="mac">Use Homebrew on a Mac.</TabItem>
</Tabs>

<Callout
  type="warning"
  title="Back up first">
Back up your config before you upgrade.
</Callout>

<Diagram src="/img/flow.svg" />

See <https://example.com/docs> for more, and <>fragments</> too.

```tsx
import Foo from 'bar';
export const x = <Tabs>kept</Tabs>;
```
"""

EXPECTED = """# Install the CLI

Install it with your package manager. Press Ctrl+C to stop; write
`<Tabs>` in code.

Linux

Run the installer as root.

```bash
sudo apt install canopy
  --yes
```

Use Homebrew on a Mac.

Back up first

Back up your config before you upgrade.

See https://example.com/docs for more, and fragments too.

```tsx
import Foo from 'bar';
export const x = <Tabs>kept</Tabs>;
```"""


def test_an_mdx_page_keeps_its_prose_and_code_and_drops_esm_tags_and_comments(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "install.mdx").write_text(PAGE)

    [found] = discover_documents([tmp_path / "docs"])
    document = load_document(found.path, root=found.root)

    assert (document.source, document.format, document.title) == (
        "install.mdx",
        "mdx",
        "Install: the CLI",
    )
    assert document.text == EXPECTED
    chunks = chunk_document(document, 60, 0)
    assert chunks and all(chunk.heading == "Install the CLI" for chunk in chunks)
    assert not any("import Tabs" in chunk.text or "<Callout" in chunk.text for chunk in chunks)


def test_prose_that_only_looks_like_jsx_is_kept() -> None:
    assert mdx_markdown("If a < b and b > c, then a < c.") == "If a < b and b > c, then a < c."
    assert mdx_markdown("Importing data:\nimport it with `canopy load`.") == (
        "Importing data:\nimport it with `canopy load`."
    )  # an `import` line inside a paragraph is prose, not ESM


def test_stray_backticks_do_not_hide_the_tags_after_them() -> None:
    # an unclosed code span ends with its paragraph; a line starting with ``` is not a fence
    # when its info string holds a backtick (CommonMark), so it opens no code block
    text = (
        "Run ``` twice.\n\n<Callout>Careful.</Callout>\n\n``` x ``` then\n\n<Tabs>Tab text</Tabs>"
    )
    assert mdx_markdown(text) == "Run ``` twice.\n\nCareful.\n\n``` x ``` then\n\nTab text"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("---\ntitle: Client\nsidebar_position: 3\ntags: [api]\n---\n", "no text after the front matter"),  # noqa: E501
        ("---\ntitle: API\n---\n\n  \n", "no text after the front matter"),
        (
            "---\ntitle: Reference\n---\n\nimport DocCardList from '@theme/DocCardList';\n\n"
            "<DocCardList />\n",
            "only MDX imports and components, no text",
        ),
        (" \n\n", "only whitespace"),
    ],
)  # fmt: skip
def test_mdx_pages_with_nothing_to_index_say_why(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "page.mdx"
    path.write_text(text)
    with pytest.raises(NothingToIndex) as raised:
        load_document(path)
    assert raised.value.message == reason


def test_an_mdx_file_quarantined_before_mdx_was_read_is_read_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.ingestion.left_out
    from tasks.chroma_client import open_chroma
    from tasks.documents.model import FORMATS
    from tasks.ingestion import ingest_files
    from tasks.settings import Settings
    from tasks.vectorstore import ChunkStore
    from tests.support.embedders import HashEmbedder

    page = tmp_path / "install.mdx"
    page.write_text(PAGE)
    settings = Settings(data_dir=tmp_path / "data")
    embedder = HashEmbedder()

    def ingest() -> tuple[int, int]:
        store = ChunkStore(open_chroma(settings), "docs", embedder.name, embedder.dimension)
        report = ingest_files(discover_documents([page]), store, embedder, settings)
        return report.added, report.quarantined

    with monkeypatch.context() as before:  # the release before MDX was read
        before.delitem(FORMATS, ".mdx")
        before.setattr(tasks.ingestion.left_out, "LEFT_OUT_VERSION", 1)
        assert ingest() == (0, 1)  # "unsupported file type", remembered for these bytes
    assert ingest() == (1, 0)
