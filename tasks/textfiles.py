"""Text files as people save them: one decoder for transcripts and documents alike."""

from __future__ import annotations

import codecs
import json
from typing import Any

from tasks.errors import InputError


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM) as text with '\\n' line ends; `InputError` saying why not.

    Refuses UTF-16/32 (by their BOM) and binary content (a NUL byte anywhere), and names the
    offset of the first byte that is not UTF-8. Empty or blank text is the caller's to judge.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("file is UTF-16 or UTF-32 encoded, not UTF-8", hint="re-save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"binary content: NUL byte at offset {nul}; this is not a text file")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        raise InputError(
            f"invalid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} cannot be decoded",
            hint="re-save the file as UTF-8",
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_json(text: str) -> Any:
    """`text` as JSON; `InputError` naming the line and column of the first defect."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
