"""Cutting a document into chunks that fit the embedder's budget, one heading section at a time."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from tasks.documents.loaders import _ATX, _FENCE, _SETEXT
from tasks.documents.model import (
    STRUCTURED_FORMATS,
    TRANSCRIPT_FORMATS,
    DocChunk,
    Document,
    MetadataValue,
    TokenCounter,
)
from tasks.tokens import count_tokens


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
