"""Loading one file as clean text, whatever its format; `InputError` says why one cannot be used.

The text's only structure is Markdown-style `#` heading lines and blank-line-separated
paragraphs, which the chunker reads. HTML has its own parser (`html_text.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.documents.discovery import source_name
from tasks.documents.html_text import _html_text
from tasks.documents.mdx_text import mdx_markdown
from tasks.documents.model import (
    DEFAULT_MAX_BYTES,
    FORMATS,
    JSON_TRANSCRIPT,
    TRANSCRIPT_FORMATS,
    Document,
    MetadataValue,
)
from tasks.errors import InputError, NothingToIndex
from tasks.textfiles import decode_text, parse_json

if TYPE_CHECKING:
    from tasks.transcripts import Utterance


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
    speakers: list[str] = []
    try:
        if fmt == "pdf":
            text, title, metadata = _pdf_text(raw)
        elif fmt in TRANSCRIPT_FORMATS:
            text, metadata, speakers = _transcript_text(path, source)
        elif fmt == "json" and _is_json_transcript(raw):
            text, metadata, speakers = _json_transcript_text(decode_text(raw))
            fmt = JSON_TRANSCRIPT
        else:
            decoded = decode_text(raw)
            if fmt == "markdown":
                text, title = _markdown_text(decoded)
            elif fmt == "mdx":
                body, title = _markdown_text(decoded)
                text = mdx_markdown(body)
            elif fmt == "html":
                text, title = _html_text(decoded)
            elif fmt in ("json", "jsonl"):
                text, metadata = _records_text(decoded, fmt, json_text_field)
            else:
                text = decoded
                speakers = labelled_speakers(text)
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
        or (_first_heading(text) if fmt in ("markdown", "mdx", "html") else None)
        or path.stem,
        text=text,
        document_hash=document_hash,
        format=fmt,
        metadata=metadata,
        speakers=speakers,
    )


def _no_text_reason(raw: bytes, fmt: str) -> str:
    """Why a readable file gave no text, in the user's words."""
    decoded = raw.decode("utf-8-sig", "replace")
    if not decoded.strip():
        return "only whitespace"
    if fmt in ("markdown", "mdx"):
        decoded = decoded.replace("\r\n", "\n")
        front_matter = _FRONT_MATTER.match(decoded)
        if front_matter and (fmt == "markdown" or not decoded[front_matter.end() :].strip()):
            return "no text after the front matter"
        if fmt == "mdx":
            return "only MDX imports and components, no text"
    if fmt == "html":
        return "no visible text in the page"
    if fmt in ("json", "jsonl"):
        return "no records with text"
    if fmt in TRANSCRIPT_FORMATS:
        return "no utterances"
    return "no text found in the file"


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


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


def _transcript_text(path: Path, source: str) -> tuple[str, dict[str, MetadataValue], list[str]]:
    """A caption file as one paragraph per utterance."""
    from tasks.transcripts import parse_transcript

    return _utterance_paragraphs(parse_transcript(path, source=source).utterances)


def _json_transcript_text(text: str) -> tuple[str, dict[str, MetadataValue], list[str]]:
    """A JSON transcript read as the summariser reads it, one paragraph per utterance."""
    from tasks.transcripts import parse_transcript_text

    return _utterance_paragraphs(parse_transcript_text(text, "json"))


def _utterance_paragraphs(
    utterances: list[Utterance],
) -> tuple[str, dict[str, MetadataValue], list[str]]:
    """`speaker: text` paragraphs, so paragraph n is utterance n (`Utterance.index`), and the
    speakers in order of appearance."""
    paragraphs = []
    speakers: dict[str, None] = {}
    for utterance in utterances:
        text = " ".join(_CONTROL.sub("", utterance.text).split()) or "…"
        if utterance.speaker:
            speakers.setdefault(utterance.speaker, None)
        paragraphs.append(f"{utterance.speaker}: {text}" if utterance.speaker else text)
    return "\n\n".join(paragraphs), {"utterances": len(paragraphs)}, list(speakers)


def labelled_speakers(text: str) -> list[str]:
    """The speakers of a plain-text file that reads as a labelled transcript ("Alice: ..."
    lines, by the summariser's own rule), in order of appearance; [] for other text."""
    from tasks.transcripts.formats.labelled import line_turns

    labelled, turns = line_turns(text, markdown=False, force_speakers=False)
    if not labelled:
        return []
    return list(dict.fromkeys(turn.speaker for turn in turns if turn.speaker))


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
    from tasks.transcripts.formats.json_turns import TURN_LIST_KEYS, whisper_segments

    if whisper_segments(data) is not None:
        return True
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
        data = parse_json(text)
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
