"""What documents load into: the formats read, `Document`, `DocChunk` and their settings."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
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
STRUCTURED_FORMATS = frozenset({"markdown", "html", "json", "jsonl"})
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Bump when loading or chunking changes what chunks a document yields.
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


class DocChunk(BaseModel):
    """A piece of a document that fits the embedder's token budget."""

    id: str
    text: str
    chunk_index: int
    heading: str = Field(
        description="Heading path, e.g. 'Handbook > Leave > Vacation'; '' if none."
    )
    content_hash: str
    token_count: int
    metadata: dict[str, MetadataValue]
