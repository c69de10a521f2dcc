"""Documents for retrieval: find them, load them as clean text, cut them into chunks.

Every format is loaded into plain text whose only structure is Markdown-style `#` heading lines
and blank-line-separated paragraphs; the chunker reads that structure, so it works the same for
Markdown, HTML and JSON records. A file that cannot be used raises `InputError` with a reason a
person can act on; the run goes on without it.

Chunk ids are `sha256(source, chunk index, content hash)`:
- the same document chunked with the same settings always gives the same ids, so every write
  is an idempotent upsert and a re-run after a crash converges instead of duplicating;
- the content hash (of the text embedded: context line and text) makes an id name one exact
  text: a changed chunk gets a new id, so the old one is visibly stale (delete
  `ids_for_source - new ids`) rather than silently overwritten, and "the collection holds
  exactly the expected ids" is a check on content, not only count;
- the index keeps two identical passages of one document apart;
- the source keeps identical passages of two documents apart. A rename therefore writes new
  ids under the new source (the old source is removed by full cleanup, as in LangChain's
  indexing API), and the vectors are not paid for again when the context line stays the same
  (a titled document; a transcript's line names its file, so a renamed one is embedded again):
  they are found by `content_hash` (`ChunkStore.embeddings_by_content_hash`), which also serves
  edits and crash recovery.

Opt-in (`chunk_document(context=True)`, `Settings.doc_chunk_context`; off by default because it
lowered recall on QMSum, benchmarks/README.md), each chunk also carries a context line
(`DocChunk.context`: the document's title unless its heading
path already starts with it; for a transcript, "Meeting: <title> · Speakers: <the chunk's
speakers>"). The line is embedded and indexed with the text (`DocChunk.embedded_text`) and kept in
the chunk's metadata; the stored text, shown and cited, is the document's own. The content hash
is of the embedded text, so a chunk whose line changed is embedded again.

Layout: `model` (formats, `Document`, `DocChunk`), `discovery` (finding files), `loaders` (one
file as clean text; `tasks.textfiles.decode_text` reads the bytes), `html_text` (the HTML
parser), `mdx_text` (MDX pages as Markdown), `chunker`.
"""

from tasks.documents.chunker import chunk_document, chunk_id, split_sections, split_to_budget
from tasks.documents.discovery import (
    DocumentPath,
    discover_documents,
    file_hash,
    source_name,
)
from tasks.documents.loaders import load_document, normalise_text
from tasks.documents.model import (
    CHUNKER_VERSION,
    DEFAULT_MAX_BYTES,
    FORMATS,
    JSON_TRANSCRIPT,
    STRUCTURED_FORMATS,
    TRANSCRIPT_FORMATS,
    DocChunk,
    Document,
    MetadataValue,
    TokenCounter,
)

__all__ = [
    "CHUNKER_VERSION",
    "DEFAULT_MAX_BYTES",
    "FORMATS",
    "JSON_TRANSCRIPT",
    "STRUCTURED_FORMATS",
    "TRANSCRIPT_FORMATS",
    "DocChunk",
    "Document",
    "DocumentPath",
    "MetadataValue",
    "TokenCounter",
    "chunk_document",
    "chunk_id",
    "discover_documents",
    "file_hash",
    "load_document",
    "normalise_text",
    "source_name",
    "split_sections",
    "split_to_budget",
]
