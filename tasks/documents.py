"""Documents for retrieval: find them, load them as clean text, cut them into chunks.

Every format is loaded into plain text whose only structure is Markdown-style `#` heading lines
and blank-line-separated paragraphs; the chunker reads that structure, so it works the same for
Markdown, HTML and JSON records. A file that cannot be used raises `InputError` with a reason a
person can act on; the run goes on without it.

Chunk ids are `sha256(source, chunk index, content hash)`:
- the same document chunked with the same settings always gives the same ids, so every write
  is an idempotent upsert and a re-run after a crash converges instead of duplicating;
- the content hash makes an id name one exact text: a changed chunk gets a new id, so the old
  one is visibly stale (delete `ids_for_source - new ids`) rather than silently overwritten,
  and "the collection holds exactly the expected ids" is a check on content, not only count;
- the index keeps two identical passages of one document apart;
- the source keeps identical passages of two documents apart. A rename therefore writes new
  ids under the new source (the old source is removed by full cleanup, as in LangChain's
  indexing API), and the vectors are not paid for again: they are found by `content_hash`
  (`ChunkStore.embeddings_by_content_hash`), which also serves edits and crash recovery.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, Field

from tasks.errors import InputError, NothingToIndex, UsageError
from tasks.tokens import count_tokens

if TYPE_CHECKING:
    from tasks.transcripts import Utterance

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


class DocumentPath(NamedTuple):
    """A file found by `discover_documents` and the folder its source name is relative to."""

    path: Path
    root: Path

    @property
    def source(self) -> str:
        return source_name(self.path, self.root)


def source_name(path: Path, root: Path | None) -> str:
    """`path` relative to `root` in POSIX form (the path as given when it is not under root)."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _matches(relative: str, patterns: Iterable[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover_documents(
    paths: Sequence[Path],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[DocumentPath]:
    """Files under `paths` (folders recursively), sorted, hidden ones skipped.

    Patterns are globs matched against the path relative to the folder given and against the
    file name (`*.md`, `policies/*`). Without `include`, every supported format is taken from
    folders; a file named explicitly is always taken unless excluded, so an unsupported one is
    reported by `load_document` instead of vanishing.
    """
    found: dict[Path, DocumentPath] = {}
    for given in paths:
        given = Path(given)
        if given.is_file():
            relative = given.name
            if _matches(relative, exclude or []) or (include and not _matches(relative, include)):
                continue
            found.setdefault(given.resolve(), DocumentPath(given, given.parent))
            continue
        if not given.is_dir():
            raise UsageError(f"no such file or folder: {given}")
        for path in given.rglob("*"):
            relative_parts = path.relative_to(given).parts
            if any(part.startswith(".") for part in relative_parts) or not path.is_file():
                continue
            relative = "/".join(relative_parts)
            if include:
                if not _matches(relative, include):
                    continue
            elif path.suffix.lower() not in FORMATS:
                continue
            if _matches(relative, exclude or []):
                continue
            found.setdefault(path.resolve(), DocumentPath(path, given))
    return sorted(found.values(), key=lambda d: (d.root.as_posix(), d.source))


def file_hash(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """`Document.document_hash` of the file without parsing it; None when the file is empty,
    over `max_bytes` or unreadable (`load_document` then says why)."""
    try:
        size = Path(path).stat().st_size
        if not 0 < size <= max_bytes:
            return None
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def load_document(
    path: Path,
    *,
    root: Path | None = None,
    json_text_field: str = "text",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Document:
    """Read one file as a `Document`; raises InputError saying why it cannot be used."""
    path = Path(path)
    source = source_name(path, root)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        supported = ", ".join(sorted(FORMATS))
        raise InputError(
            f"unsupported file type {path.suffix or '(no extension)'!r}; supported: {supported}",
            source=source,
        )
    try:
        size = path.stat().st_size
        if size == 0:
            raise NothingToIndex("empty file", source=source)
        if size > max_bytes:
            raise InputError(
                f"file is {_megabytes(size)}, over the {_megabytes(max_bytes)} limit",
                source=source,
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", source=source) from None

    document_hash = hashlib.sha256(raw).hexdigest()
    metadata: dict[str, MetadataValue] = {}
    title: str | None = None
    try:
        if fmt == "pdf":
            text, title, metadata = _pdf_text(raw)
        elif fmt in TRANSCRIPT_FORMATS:
            text, metadata = _transcript_text(path, source)
        elif fmt == "json" and _is_json_transcript(raw):
            text, metadata = _json_transcript_text(_decode(raw))
            fmt = JSON_TRANSCRIPT
        else:
            decoded = _decode(raw)
            if fmt == "markdown":
                text, title = _markdown_text(decoded)
            elif fmt == "html":
                text, title = _html_text(decoded)
            elif fmt in ("json", "jsonl"):
                text, metadata = _records_text(decoded, fmt, json_text_field)
            else:
                text = decoded
    except InputError as exc:
        if exc.source is None:
            exc.source = source
        raise
    text = normalise_text(text)
    if not text:
        raise NothingToIndex(_no_text_reason(raw, fmt), source=source)
    return Document(
        source=source,
        title=(title or "").strip()
        or (_first_heading(text) if fmt in ("markdown", "html") else None)
        or path.stem,
        text=text,
        document_hash=document_hash,
        format=fmt,
        metadata=metadata,
    )


def _no_text_reason(raw: bytes, fmt: str) -> str:
    """Why a readable file gave no text, in the user's words."""
    decoded = raw.decode("utf-8-sig", "replace")
    if not decoded.strip():
        return "only whitespace"
    if fmt == "markdown" and _FRONT_MATTER.match(decoded.replace("\r\n", "\n")):
        return "no text after the front matter"
    if fmt == "html":
        return "no visible text in the page"
    if fmt in ("json", "jsonl"):
        return "no records with text"
    if fmt in TRANSCRIPT_FORMATS:
        return "no utterances"
    return "no text found in the file"


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise InputError("binary file (contains NUL bytes), not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise InputError(
            f"not valid UTF-8 (byte 0x{bad} at offset {exc.start})",
            hint="convert the file to UTF-8",
        ) from None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """NFC, '\\n' line ends, no control characters or trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text.replace("\f", "\n\n"))
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _BLANK_LINES.sub("\n\n", text).strip()


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.DOTALL)


def _first_heading(text: str) -> str | None:
    for line in text.split("\n", 50)[:50]:
        match = _ATX.match(line)
        if match and match.group(1) == "#":
            return match.group(2)
    return None


def _markdown_text(text: str) -> tuple[str, str | None]:
    """Markdown as is, minus YAML front matter (whose `title:` becomes the title)."""
    title = None
    match = _FRONT_MATTER.match(text.replace("\r\n", "\n"))
    if match:
        for line in match.group(1).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "title" and value.strip():
                title = value.strip().strip("'\"")
        text = text.replace("\r\n", "\n")[match.end() :]
    return text, title


class _HtmlText(HTMLParser):
    """Visible text of an HTML page with headings as '#' lines and blocks as paragraphs."""

    SKIP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe"})
    # Page banners and footers; inside an article they hold its own title, so they stay.
    PAGE_CHROME = frozenset({"header", "footer"})
    CONTENT = frozenset({"article", "main", "section"})
    BLOCKS = frozenset(
        {
            "p", "div", "section", "article", "main", "aside", "blockquote", "pre", "table",
            "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "fieldset", "address",
            "details", "summary", "hr", "body", "header", "footer",
        }
    )  # fmt: skip
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.first_h1 = ""
        self._skip = 0
        self._content = 0
        self._skipping: list[str] = []
        self._in_title = False
        self._heading: list[str] | None = None
        self._heading_level = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP or (tag in self.PAGE_CHROME and not self._content):
            self._skip += 1
            self._skipping.append(tag)
            return
        if tag in self.CONTENT:
            self._content += 1
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
        elif tag in self.HEADINGS:
            self.parts.append("\n\n")
            self._heading = []
            self._heading_level = int(tag[1])
        elif tag == "br":
            self.parts.append(" " if self._heading is not None else "\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "tr":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if self._skipping and tag == self._skipping[-1]:
            self._skipping.pop()
            self._skip -= 1
            return
        if tag in self.CONTENT and self._content:
            self._content -= 1
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag in self.HEADINGS and self._heading is not None:
            text = " ".join("".join(self._heading).split())
            if text:
                self.parts.append("#" * self._heading_level + " " + text + "\n\n")
                if self._heading_level == 1 and not self.first_h1:
                    self.first_h1 = text
            self._heading = None
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        elif self._heading is not None:
            self._heading.append(data)
        elif self._pre:
            self.parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_text(html: str) -> tuple[str, str | None]:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    title = " ".join(parser.title.split()) or parser.first_h1 or None
    return "\n".join(lines), title


def _pdf_text(raw: bytes) -> tuple[str, str | None, dict[str, MetadataValue]]:
    from pypdf import PdfReader

    # pypdf logs what it repairs or gives up on as warnings; a PDF it cannot read is reported
    # once, in words, as the document's quarantine reason
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if b"%PDF" not in raw[:1024]:
        raise InputError("not a PDF file (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except Exception as exc:  # pypdf raises DependencyError, PdfReadError, ...
                raise InputError(f"encrypted PDF that cannot be opened ({exc})") from None
            if not unlocked:
                raise InputError(
                    "encrypted PDF: a password is needed to read it",
                    hint="save an unencrypted copy",
                )
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
        title = str(info.title) if info is not None and info.title else None
    except InputError:
        raise
    except Exception as exc:  # a damaged file can fail anywhere inside pypdf
        raise InputError(f"unreadable PDF ({type(exc).__name__}: {exc})"[:300]) from None
    if not any(page.strip() for page in pages):
        raise InputError(
            f"no extractable text in {len(pages)} PDF page(s): scanned or image-only PDFs "
            "need OCR first",
        )
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    return text, title, {"pages": len(pages)}


def _transcript_text(path: Path, source: str) -> tuple[str, dict[str, MetadataValue]]:
    """A caption file as one paragraph per utterance."""
    from tasks.transcripts import parse_transcript

    return _utterance_paragraphs(parse_transcript(path, source=source).utterances)


def _json_transcript_text(text: str) -> tuple[str, dict[str, MetadataValue]]:
    """A JSON transcript read as the summariser reads it, one paragraph per utterance."""
    from tasks.transcripts import parse_transcript_text

    return _utterance_paragraphs(parse_transcript_text(text, "json"))


def _utterance_paragraphs(utterances: list[Utterance]) -> tuple[str, dict[str, MetadataValue]]:
    """`speaker: text` paragraphs, so paragraph n is utterance n (`Utterance.index`)."""
    paragraphs = []
    for utterance in utterances:
        text = " ".join(_CONTROL.sub("", utterance.text).split()) or "…"
        paragraphs.append(f"{utterance.speaker}: {text}" if utterance.speaker else text)
    return "\n\n".join(paragraphs), {"utterances": len(paragraphs)}


# Narrower than the summariser's speaker fields: records with a `name` or `role` and a `text`
# are records, not a transcript.
_SPEAKER_FIELDS = ("speaker", "speaker_name")


def _is_turn_list(value: object) -> bool:
    from tasks.transcripts import TEXT_KEYS

    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(item, dict)
            and any(key in item for key in _SPEAKER_FIELDS)
            and any(key in item for key in TEXT_KEYS)
            for item in value
        )
    )


def _is_json_transcript(raw: bytes) -> bool:
    """True for JSON the summariser reads as a transcript, and that is clearly not records:
    Whisper output (`segments` with `start` and `text`), a list of turns that each have a
    speaker and a text, or an object holding such a list under a transcript key. Anything
    else, including invalid JSON, is left to the records loader and its error messages.
    """
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if isinstance(data, list):
        return _is_turn_list(data)
    if not isinstance(data, dict):
        return False
    segments = data.get("segments")
    if (
        isinstance(segments, list)
        and segments
        and all(isinstance(s, dict) and "start" in s and "text" in s for s in segments)
    ):
        return True
    from tasks.transcripts import TURN_LIST_KEYS

    # The summariser reads the first non-empty list under these keys: judge that one.
    lists = (data[k] for k in TURN_LIST_KEYS if isinstance(data.get(k), list) and data[k])
    return _is_turn_list(next(lists, None))


# Fields that name a record, best first; the first one present becomes its heading.
_TITLE_FIELDS = ("name", "title", "heading", "question", "subject", "version", "id")
_SHORT_LIST_ITEM = 40
_MAX_DEPTH = 12


def _records_text(text: str, fmt: str, text_field: str) -> tuple[str, dict[str, MetadataValue]]:
    """JSON or JSONL as Markdown: each record a '#' section, nested records sub-sections.

    A record's `text_field` becomes its body paragraph; its other fields are kept as
    `key: value` lines (they carry names, dates and tags worth finding), so files without that
    field are still readable rather than rejected.
    """
    records: list[tuple[str, Any]] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"Line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"line {number} is not valid JSON: {exc.msg}") from None
        blocks = [
            b for label, record in records for b in _render_record(record, label, 1, text_field)
        ]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        if isinstance(data, list):
            records = [(f"Record {n}", item) for n, item in enumerate(data, start=1)]
            blocks = [
                b for label, item in records for b in _render_record(item, label, 1, text_field)
            ]
        elif isinstance(data, dict):
            records = [("Record 1", data)]
            blocks = _render_fields(data, 1, text_field)
        else:
            raise InputError(f"JSON holds a single {_json_type(data)}, not records")
    return "\n\n".join(blocks), {"records": len(records)}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _record_title(record: dict[str, Any], text_field: str) -> tuple[str | None, str | None]:
    """(heading, field used) from the first naming field with a short scalar value."""
    for key in _TITLE_FIELDS:
        value = record.get(key)
        if key != text_field and isinstance(value, str | int) and not isinstance(value, bool):
            text = " ".join(str(value).split())
            if text and len(text) <= 200:
                return (text if key in ("title", "name", "heading", "question", "subject")
                        else f"{key} {text}"), key  # fmt: skip
    return None, None


def _render_record(record: Any, label: str, level: int, text_field: str) -> list[str]:
    if isinstance(record, str):
        return [f"{'#' * min(level, 6)} {label}", record.strip()] if record.strip() else []
    if not isinstance(record, dict):
        raise InputError(f"{label.lower()} is a JSON {_json_type(record)}, not an object or string")
    heading, _ = _record_title(record, text_field)
    body = _render_fields(record, level + 1, text_field)
    return [f"{'#' * min(level, 6)} {heading or label}", *body] if body else []


def _render_fields(
    record: dict[str, Any], level: int, text_field: str, depth: int = 0
) -> list[str]:
    """The body of a record: its text, `key: value` lines, then nested records as sections."""
    _, title_key = _record_title(record, text_field)
    blocks: list[str] = []
    text = record.get(text_field)
    if isinstance(text, str) and text.strip():
        blocks.append(text.strip())
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in record.items():
        if key in (text_field, title_key) or value is None or value == "" or value == []:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            nested.append((key, value))
        elif isinstance(value, list):
            items = [" ".join(str(v).split()) for v in value]
            if all(len(item) <= _SHORT_LIST_ITEM for item in items):
                lines.append(f"{key}: {', '.join(items)}")
            else:
                blocks.append("\n".join([f"{key}:", *(f"- {item}" for item in items)]))
        else:
            lines.append(f"{key}: {' '.join(str(value).split())}")
    if lines:
        blocks.insert(1 if blocks and isinstance(text, str) else 0, "\n".join(lines))
    for key, value in nested:
        if depth >= _MAX_DEPTH:
            blocks.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
        elif isinstance(value, dict):
            body = _render_fields(value, level + 1, text_field, depth + 1)
            if body:
                blocks.extend([f"{'#' * min(level, 6)} {key}", *body])
        else:
            blocks.append(f"{'#' * min(level, 6)} {key}")
            for number, item in enumerate(value, start=1):
                if isinstance(item, dict):
                    heading, _ = _record_title(item, text_field)
                    body = _render_fields(item, level + 2, text_field, depth + 1)
                    if body:
                        blocks.extend(
                            [f"{'#' * min(level + 1, 6)} {heading or f'{key} {number}'}", *body]
                        )
                elif item not in (None, "", []):
                    blocks.append(f"{key} {number}: {json.dumps(item, ensure_ascii=False)}")
    return blocks


@dataclass
class _Section:
    heading: str
    paragraphs: list[tuple[int, str]] = field(default_factory=list)


def split_sections(text: str, *, headings: bool = True) -> list[_Section]:
    """Paragraphs grouped under their heading path; '#' lines in code fences are not headings."""
    sections = [_Section("")]
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    fence: str | None = None
    number = 0

    def flush() -> None:
        nonlocal number
        paragraph = "\n".join(lines).strip("\n")
        lines.clear()
        if paragraph.strip():
            sections[-1].paragraphs.append((number, paragraph))
            number += 1

    def open_section(level: int, title: str) -> None:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, " ".join(title.split())))
        sections.append(_Section(" > ".join(t for _, t in stack)))

    for line in text.split("\n"):
        if fence is not None:
            lines.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        if not headings:
            if line.strip():
                lines.append(line)
            else:
                flush()
            continue
        fence_match = _FENCE.match(line)
        atx = _ATX.match(line)
        setext = _SETEXT.match(line)
        if fence_match:
            flush()
            fence = fence_match.group(1)[:3]
            lines.append(line)
        elif atx:
            flush()
            if atx.group(2):
                open_section(len(atx.group(1)), atx.group(2))
        elif setext and len(lines) == 1 and not lines[0].lstrip().startswith(("-", "*", ">")):
            title = lines.pop()
            open_section(1 if setext.group(1)[0] == "=" else 2, title)
        elif setext and not lines and setext.group(1)[0] == "-":
            flush()  # a thematic break
        elif not line.strip():
            flush()
        else:
            lines.append(line)
    flush()
    return [s for s in sections if s.paragraphs]


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_SPLIT_LEVELS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\n"), "\n"),
    (_SENTENCE_END, " "),
    (re.compile(r"\s+"), " "),
)


def split_to_budget(text: str, budget: int, count: TokenCounter, level: int = 0) -> list[str]:
    """`text` cut into pieces of at most `budget` tokens: on lines, then sentences, then words."""
    if count([text])[0] <= budget:
        return [text]
    if level >= len(_SPLIT_LEVELS):
        middle = len(text) // 2
        if middle == 0:
            return [text]
        return split_to_budget(text[:middle], budget, count, level) + split_to_budget(
            text[middle:], budget, count, level
        )
    pattern, joiner = _SPLIT_LEVELS[level]
    parts = [p for p in pattern.split(text) if p.strip()]
    if len(parts) <= 1:
        return split_to_budget(text, budget, count, level + 1)
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for part, cost in zip(parts, count(parts), strict=True):
        if cost > budget:
            if current:
                pieces.append(joiner.join(current))
                current, used = [], 0
            pieces.extend(split_to_budget(part, budget, count, level + 1))
            continue
        if current and used + cost + 1 > budget:
            pieces.append(joiner.join(current))
            current, used = [], 0
        current.append(part)
        used += cost + 1
    if current:
        pieces.append(joiner.join(current))
    # Token counts are not quite additive; re-check the packed pieces.
    result: list[str] = []
    for piece, cost in zip(pieces, count(pieces), strict=True):
        result.extend(
            [piece] if cost <= budget else split_to_budget(piece, budget, count, level + 1)
        )
    return result


class _Unit(NamedTuple):
    text: str
    paragraph: int
    cost: int


def _join(units: list[_Unit]) -> str:
    """Units of one paragraph rejoin with a line break, paragraphs with a blank line."""
    parts: list[str] = []
    for i, unit in enumerate(units):
        if i:
            parts.append("\n" if unit.paragraph == units[i - 1].paragraph else "\n\n")
        parts.append(unit.text)
    return "".join(parts)


def chunk_document(
    doc: Document,
    max_tokens: int,
    overlap_tokens: int = 0,
    *,
    count: TokenCounter | None = None,
    heading_in_text: bool = True,
) -> list[DocChunk]:
    """Cut a document into chunks of at most `max_tokens`, one heading section at a time.

    Paragraphs are packed whole; one longer than the budget is split on lines, sentences, then
    words. The next chunk of a section starts with up to `overlap_tokens` of the previous one's
    tail (whole paragraphs, else its last sentences). A chunk never spans two sections, and with
    `heading_in_text` its text starts with the heading path, which helps retrieval of short
    sections. `count` measures tokens (default cl100k_base); pass the embedder's own counter
    (`LocalOnnxEmbedder.count_tokens`, budget `max_text_tokens`) so no chunk is truncated.
    """
    if max_tokens < 16:
        raise ValueError("max_tokens must be at least 16")
    counter = count or _count_cl100k
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    pieces: list[tuple[str, str, list[int]]] = []  # (heading, text, paragraph numbers)
    for section in split_sections(doc.text, headings=doc.format in STRUCTURED_FORMATS):
        header = section.heading if heading_in_text else ""
        header_cost = counter([header])[0] + 2 if header else 0
        if header_cost > max_tokens // 2:
            header, header_cost = "", 0
        budget = max_tokens - header_cost
        for body, paragraphs in _pack_section(section, budget, overlap_tokens, counter):
            text = f"{header}\n\n{body}" if header else body
            pieces.append((section.heading, text, paragraphs))

    counts = counter([text for _, text, _ in pieces]) if pieces else []
    chunks = []
    for index, ((heading, text, paragraphs), tokens) in enumerate(zip(pieces, counts, strict=True)):
        content_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        metadata: dict[str, MetadataValue] = {
            key: value for key, value in doc.metadata.items() if isinstance(value, MetadataValue)
        }
        metadata.update(
            source=doc.source,
            title=doc.title,
            heading=heading,
            chunk_index=index,
            chunk_count=len(pieces),
            content_hash=content_hash,
            document_hash=doc.document_hash,
            format=doc.format,
            first_paragraph=paragraphs[0],
            last_paragraph=paragraphs[-1],
        )
        if doc.format in TRANSCRIPT_FORMATS:
            metadata.update(first_utterance=paragraphs[0], last_utterance=paragraphs[-1])
        chunks.append(
            DocChunk(
                id=chunk_id(doc.source, index, content_hash),
                text=text,
                chunk_index=index,
                heading=heading,
                content_hash=content_hash,
                token_count=tokens,
                metadata=metadata,
            )
        )
    return chunks


def _count_cl100k(texts: list[str]) -> list[int]:
    # tiktoken's batch API starts a thread pool per call: slower for the short lists used here.
    return [count_tokens(text) for text in texts]


def chunk_id(source: str, chunk_index: int, content_hash: str) -> str:
    """Deterministic id of a chunk (see the module docstring for why these three parts)."""
    return hashlib.sha256(f"{source}\x1f{chunk_index}\x1f{content_hash}".encode()).hexdigest()


def _pack_section(
    section: _Section, budget: int, overlap_tokens: int, count: TokenCounter
) -> list[tuple[str, list[int]]]:
    """Greedy packing of a section's paragraphs into bodies of at most `budget` tokens."""
    texts = [text for _, text in section.paragraphs]
    units: list[_Unit] = []
    for (number, text), cost in zip(section.paragraphs, count(texts), strict=True):
        if cost <= budget:
            units.append(_Unit(text, number, cost))
        else:
            # Pieces leave room for the overlap, so the next chunk can start with one.
            piece_budget = max(budget - overlap_tokens - 4, budget // 2)
            parts = split_to_budget(text, piece_budget, count)
            units.extend(_Unit(p, number, c) for p, c in zip(parts, count(parts), strict=True))

    bodies: list[tuple[str, list[int]]] = []
    carry: list[_Unit] = []
    start = 0
    while start < len(units):
        members = list(carry)
        used = sum(u.cost + 2 for u in members)
        end = start
        while end < len(units) and (used + units[end].cost + 2 <= budget or end == start):
            if used + units[end].cost + 2 > budget:  # the overlap leaves no room: drop it
                members, used = [], 0
            members.append(units[end])
            used += units[end].cost + 2
            end += 1
        body = _join(members)
        while count([body])[0] > budget and len(members) > 1:
            if end - start > 1:
                end -= 1
                members.pop()
            else:
                members = members[-1:]
            body = _join(members)
        bodies.append((body, sorted({u.paragraph for u in members})))
        start = end
        carry = _overlap(members, overlap_tokens, count) if start < len(units) else []
    return bodies


def _overlap(members: list[_Unit], overlap_tokens: int, count: TokenCounter) -> list[_Unit]:
    """The tail of a chunk to repeat: whole units that fit, else the last unit's last sentences."""
    if overlap_tokens <= 0:
        return []
    carried: list[_Unit] = []
    used = 0
    for unit in reversed(members[1:]):
        if used + unit.cost + 2 > overlap_tokens:
            break
        carried.insert(0, unit)
        used += unit.cost + 2
    if carried:
        return carried
    last = members[-1]
    sentences = [s for s in _SENTENCE_END.split(last.text) if s.strip()]
    if len(sentences) < 2:
        return []
    tail: list[str] = []
    for sentence, cost in zip(reversed(sentences[1:]), reversed(count(sentences[1:])), strict=True):
        if used + cost + 1 > overlap_tokens:
            break
        tail.insert(0, sentence)
        used += cost + 1
    if not tail:
        return []
    text = " ".join(tail)
    return [_Unit(text, last.paragraph, count([text])[0])]
