"""A seeded documentation tree shaped like a real docs site's, for tests and benchmarks.

    build_tree(root, files=40, seed=0) -> DocsTree

Like a Docusaurus or Nextra `docs/` folder: nested sections; Markdown pages with YAML front
matter (title, sidebar_position, tags); MDX pages with `import`/`export` lines and JSX
components (`<Tabs>`/`<TabItem>`, `<Callout>`, self-closing `<Diagram />`); fenced code in
several languages, pipe tables, admonitions; short pages, long pages of several thousand words,
and ~17 % API reference stubs that hold only front matter. A few files are there to be left
out: whitespace-only and empty pages, category pages with only headings or only a
`<DocCardList />`, one binary file saved as `.md`; two images that discovery does not take.

The prose is sentences and headings of the sample corpus (data/documents), drawn at random, so
it reads like the samples and every chunk is distinct (none is saved by deduplication). Each
file's expected verdict is recorded (`TreeFile`), so a test or benchmark can check that every
file is accounted for once, with the right reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "documents"

INDEXED = "indexed"
SKIPPED = "skipped"
QUARANTINED = "quarantined"
FRONT_MATTER_ONLY = "no text after the front matter"
BINARY_REASON = "binary content"
"""How the quarantine reason of the binary page starts (the loader names the NUL's offset)."""

STUB_SHARE = 0.17
# (share of content pages, words per page range): short, medium and long pages.
PAGE_SIZES = ((0.35, (60, 250)), (0.55, (500, 1500)), (0.10, (3000, 6000)))
MDX_SHARE = 0.35
LANGUAGES = ("bash", "python", "yaml", "json", "tsx", "go")
# Files left out whatever the tree's size: (name, verdict, reason, bytes).
LEFT_OUT = (
    ("drafts/untitled.md", SKIPPED, "only whitespace", b"   \n\n\t\n"),
    ("drafts/notes.md", SKIPPED, "only whitespace", b"\n\n"),
    ("reference/cli/todo.mdx", SKIPPED, "only whitespace", b" \n"),
    ("drafts/empty.md", SKIPPED, "empty file", b""),
    ("assets/export.md", QUARANTINED, BINARY_REASON, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
)
IMAGES = ("static/img/architecture.png", "static/img/logo.svg.png")


@dataclass(frozen=True)
class TreeFile:
    """One file of the tree and the verdict an ingest must give it."""

    source: str
    verdict: str
    reason: str = ""
    words: int = 0


@dataclass
class DocsTree:
    root: Path
    files: list[TreeFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """Files under `root` that document discovery does not take (images)."""
    size_bytes: int = 0

    def count(self, verdict: str) -> int:
        return sum(1 for f in self.files if f.verdict == verdict)

    def skipped(self) -> dict[str, str]:
        """Source -> the reason an ingest must give for skipping it."""
        return {f.source: f.reason for f in self.files if f.verdict == SKIPPED}

    def quarantined(self) -> dict[str, str]:
        """Source -> how the quarantine reason must start."""
        return {f.source: f.reason for f in self.files if f.verdict == QUARANTINED}


@cache
def sample_pools(code_lines: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Distinct sentences and headings of the sample corpus, as the pipeline loads it; a code
    block flattened into a line is not a sentence unless `code_lines` (benchmarks/ingest_speed.py
    keeps them, as its corpus always has)."""
    from tasks.documents import discover_documents, load_document, split_sections

    sentences: set[str] = set()
    headings: set[str] = set()
    for found in discover_documents([SAMPLES]):
        document = load_document(found.path, root=found.root)
        for section in split_sections(document.text):
            if section.heading:
                headings.add(section.heading.split(" > ")[-1])
            for _, paragraph in section.paragraphs:
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                    if (
                        len(sentence.split()) >= 4
                        and not sentence.startswith(("-", "|", "#"))
                        and (code_lines or "```" not in sentence)
                    ):
                        sentences.add(sentence)
    return tuple(sorted(sentences)), tuple(sorted(headings))


@cache
def _words() -> tuple[str, ...]:
    """Plain lowercase words of the samples: identifiers, table cells, tags, folder names."""
    sentences, _ = sample_pools()
    found = {w for s in sentences for w in re.findall(r"\b[a-z]{4,10}\b", s)}
    return tuple(sorted(found))


class _Writer:
    """Draws the parts of pages from the sample pools with one seeded random generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sentences, self.headings = sample_pools()
        self.words = _words()

    def word(self) -> str:
        return self.rng.choice(self.words)

    def heading(self) -> str:
        return self.rng.choice(self.headings).strip("#* ").rstrip(".").replace('"', "'")

    def paragraph(self, sentences: tuple[int, int] = (2, 7)) -> str:
        return " ".join(self.rng.sample(self.sentences, self.rng.randint(*sentences)))

    def front_matter(self, title: str, position: int) -> str:
        tags = sorted({self.word() for _ in range(self.rng.randint(1, 4))})
        lines = [f'title: "{title}"', f"sidebar_position: {position}"]
        if self.rng.random() < 0.5:
            lines.append(f"tags: [{', '.join(tags)}]")
        else:
            lines += ["tags:", *(f"  - {tag}" for tag in tags)]
        if self.rng.random() < 0.3:
            lines.append(f"slug: /{self.word()}/{self.word()}")
        return "---\n" + "\n".join(lines) + "\n---\n"

    def code(self) -> str:
        language = self.rng.choice(LANGUAGES)
        a, b, c = self.word(), self.word(), self.word()
        n = self.rng.randint(2, 500)
        body = {
            "bash": f"canopy {a} {b} --{c} {n}\ncanopy status --{a} | grep {b}",
            "python": f'from canopy import Client\n\nclient = Client(region="{a}")\n'
            f"for item in client.{b}(limit={n}):\n    print(item.{c})",
            "yaml": f"{a}:\n  {b}: {n}\n  {c}:\n    - {self.word()}\n    - {self.word()}",
            "json": f'{{\n  "{a}": {n},\n  "{b}": ["{c}", "{self.word()}"],\n  "enabled": true\n}}',
            "tsx": f"export function {a.title()}{b.title()}() {{\n  const [{c}, set] = "
            f'useState({n});\n  return <Card title="{a}">{{{c}}}</Card>;\n}}',
            "go": f"func {a.title()}(ctx context.Context) error {{\n\treturn client.{b.title()}"
            f"(ctx, {n})\n}}",
        }[language]
        return f"```{language}\n{body}\n```"

    def table(self) -> str:
        columns = [self.word().title() for _ in range(self.rng.randint(2, 4))]
        rows = [
            [self.rng.choice((self.word(), str(self.rng.randint(1, 999)), f"`{self.word()}`"))
             for _ in columns]
            for _ in range(self.rng.randint(2, 8))
        ]  # fmt: skip
        lines = [columns, ["---"] * len(columns), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)

    def admonition(self) -> str:
        kind = self.rng.choice(("note", "tip", "warning", "danger", "info"))
        return f":::{kind}\n\n{self.paragraph((1, 3))}\n\n:::"

    def block(self, mdx: bool) -> str:
        """One block of a section: mostly prose, sometimes code, a table, an admonition or,
        in MDX, a component."""
        roll = self.rng.random()
        if roll < 0.62:
            return self.paragraph()
        if roll < 0.76:
            return self.code()
        if roll < 0.85:
            return self.table()
        if roll < 0.91 or not mdx:
            return self.admonition()
        return self.component()

    def component(self) -> str:
        kind = self.rng.random()
        if kind < 0.45:
            items = "\n".join(
                f'  <TabItem value="{lang}" label="{lang.title()}">\n\n{self.code()}\n\n'
                f"{self.paragraph((1, 2))}\n\n  </TabItem>"
                for lang in self.rng.sample(LANGUAGES, 2)
            )
            return f'<Tabs groupId="{self.word()}">\n{items}\n</Tabs>'
        if kind < 0.8:
            kind_name = self.rng.choice(("warning", "info", "tip"))
            return (
                f'<Callout type="{kind_name}" title="{self.heading()}">\n'
                f"{self.paragraph((1, 3))}\n</Callout>"
            )
        return f'<Diagram src="/img/{self.word()}.svg" alt="{self.word()}" />'

    def page(self, title: str, position: int, words: int, mdx: bool) -> str:
        """A page of about `words` words of prose (code and tables come on top)."""
        parts = [self.front_matter(title, position)]
        if mdx:
            parts.append(
                "import Tabs from '@theme/Tabs';\nimport TabItem from '@theme/TabItem';\n"
                "import { Callout, Diagram } from '@site/src/components';\n\n"
                f"export const owner = '{self.word()}';\n"
            )
        parts.append(f"# {title}\n\n{self.paragraph((1, 3))}")
        written = len(parts[-1].split())
        while written < words:
            section = [f"## {self.heading()}"]
            for _ in range(self.rng.randint(1, 5)):
                section.append(self.block(mdx))
                written += len(section[-1].split())
            if self.rng.random() < 0.3:
                section.insert(2, f"### {self.heading()}")
            parts.append("\n\n".join(section))
        return "\n\n".join(parts) + "\n"

    def page_words(self) -> int:
        roll = self.rng.random()
        for share, (low, high) in PAGE_SIZES:
            if roll < share:
                return self.rng.randint(low, high)
            roll -= share
        return self.rng.randint(*PAGE_SIZES[-1][1])


def _folders(writer: _Writer, count: int) -> list[str]:
    """Nested section folders: getting-started, guides/<topic>/<sub>, reference/api/<module>."""
    folders = ["getting-started"]
    while len(folders) < count:
        top = writer.rng.choice(("guides", "concepts", "how-to", "tutorials"))
        depth = writer.rng.randint(1, 3)
        folders.append("/".join([top, *(writer.word() for _ in range(depth))]))
    return sorted(set(folders))


def build_tree(root: Path, files: int = 40, seed: int = 0) -> DocsTree:
    """Write a docs tree of `files` documents (files discovery takes) under `root`."""
    writer = _Writer(seed)
    rng = writer.rng
    tree = DocsTree(root=root)
    special = [
        *LEFT_OUT,
        ("guides/index.md", SKIPPED, "only headings, no text",
         b"---\ntitle: Guides\n---\n\n# Guides\n\n## Getting around\n\n## Next steps\n"),
        ("reference/index.mdx", SKIPPED, "only MDX imports and components, no text",
         b"---\ntitle: Reference\n---\n\nimport DocCardList from '@theme/DocCardList';\n\n"
         b"<DocCardList />\n"),
    ]  # fmt: skip
    stubs = round(files * STUB_SHARE)
    pages = files - stubs - len(special)
    if pages < 1:
        raise ValueError(f"a tree needs more than {len(special) + stubs} files")
    for name, verdict, reason, data in special:
        _write(tree, name, data, TreeFile(name, verdict, reason))
    for number in range(stubs):
        module = writer.word()
        name = f"reference/api/{module}/{module}-{number:05d}.{rng.choice(('md', 'mdx'))}"
        text = writer.front_matter(f"{module}.{writer.word()}()", number)
        _write(tree, name, text.encode(), TreeFile(name, SKIPPED, FRONT_MATTER_ONLY))
    folders = _folders(writer, max(3, pages // 20))
    for number in range(pages):
        mdx = rng.random() < MDX_SHARE
        words = writer.page_words()
        name = f"{rng.choice(folders)}/{writer.word()}-{number:05d}.{'mdx' if mdx else 'md'}"
        text = writer.page(writer.heading(), number % 20 + 1, words, mdx)
        _write(tree, name, text.encode(), TreeFile(name, INDEXED, words=words))
    for image in IMAGES:
        path = root / image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.randbytes(256))
        tree.ignored.append(image)
    tree.files.sort(key=lambda f: f.source)
    return tree


def _write(tree: DocsTree, name: str, data: bytes, record: TreeFile) -> None:
    path = tree.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    tree.size_bytes += len(data)
    tree.files.append(record)
