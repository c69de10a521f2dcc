"""What documents load into: the formats read, `Document`, `DocChunk` and their settings."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from tasks.vectorstore import with_context

FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "mdx",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
    ".jsonl": "jsonl",
    ".vtt": "vtt",
    ".srt": "srt",
}
# A `.json` file holding a transcript (a list of turns or Whisper output) loads as this format.
JSON_TRANSCRIPT = "json-transcript"
TRANSCRIPT_FORMATS = frozenset({"vtt", "srt", JSON_TRANSCRIPT})
# Formats whose text carries Markdown headings after loading.
STRUCTURED_FORMATS = frozenset({"markdown", "mdx", "html", "json", "jsonl"})
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Bump when loading or chunking changes what chunks a document yields (or the text embedded;
# the opt-in context line is recorded in the chunking key instead, `chunking_key`).
CHUNKER_VERSION = 2

TokenCounter = Callable[[list[str]], list[int]]
MetadataValue = str | int | float | bool


class Document(BaseModel):
    """One loaded file as clean text."""

    source: str = Field(description="Path relative to the folder it was found in, with '/'.")
    title: str
    text: str = Field(
        description="Clean text; '#' lines are headings, blank lines part paragraphs."
    )
    document_hash: str = Field(description="sha256 of the file's bytes.")
    format: str
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    speakers: list[str] = Field(
        default_factory=list,
        description="A transcript's speakers (labelled turns), in order of appearance; "
        "[] for other documents.",
    )


class DocChunk(BaseModel):
    """A piece of a document that fits the embedder's token budget."""

    id: str
    text: str
    chunk_index: int
    heading: str = Field(
        description="Heading path, e.g. 'Handbook > Leave > Vacation'; '' if none."
    )
    content_hash: str = Field(description="sha256 of `embedded_text`: what the vector is of.")
    token_count: int = Field(description="Tokens of `embedded_text`.")
    metadata: dict[str, MetadataValue]
    context: str = Field(
        "",
        description="One line naming where the chunk comes from (the document's title; a "
        "transcript's meeting and the chunk's speakers), embedded and indexed with the text "
        "but not part of it.",
    )

    @property
    def embedded_text(self) -> str:
        """The text the embedder and the lexical index read: the context line, then the text."""
        return with_context(self.context, self.text)
