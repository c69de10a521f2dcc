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
from tasks.vectorstore import with_context


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
    counts_add_up: bool = False,
    heading_in_text: bool = True,
    context: bool = False,
) -> list[DocChunk]:
    """Cut a document into chunks of at most `max_tokens`, one heading section at a time.

    Paragraphs are packed whole; one longer than the budget is split on lines, sentences, then
    words. The next chunk of a section starts with up to `overlap_tokens` of the previous one's
    tail (whole paragraphs, else its last sentences). A chunk never spans two sections, and with
    `heading_in_text` its text starts with the heading path, which helps retrieval of short
    sections. `count` measures tokens (default cl100k_base); pass the embedder's own counter
    (`LocalOnnxEmbedder.count_tokens`, budget `max_text_tokens`) so no chunk is truncated.
    `counts_add_up`: `count` of texts joined by whitespace is the sum of their counts (true of
    the embedder's word pieces, `LocalOnnxEmbedder.TOKEN_COUNTS_ADD_UP`; not of cl100k, whose
    tokens can span a space), so a chunk's count is known from its parts and not counted again.

    With `context`, each chunk also gets a context line (`_ContextLines`), embedded and indexed
    with its text (`DocChunk.embedded_text`, within the same budget) but not part of it.
    """
    if max_tokens < 16:
        raise ValueError("max_tokens must be at least 16")
    counter = count or _count_cl100k
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    sections = split_sections(doc.text, headings=doc.format in STRUCTURED_FORMATS)
    contexts = None
    if context:
        headings = [s.heading if heading_in_text else "" for s in sections]
        contexts = _ContextLines(doc, counter, max_tokens, headings)
    reserve = contexts.reserve if contexts else 0
    # (heading, text, paragraph numbers, tokens when known from the parts)
    pieces: list[tuple[str, str, list[int], int | None]] = []
    for section in sections:
        header = section.heading if heading_in_text else ""
        header_cost = counter([header])[0] + 2 if header else 0
        if header_cost > max_tokens // 2:
            header, header_cost = "", 0
        budget = max_tokens - header_cost - reserve
        packed = _pack_section(section, budget, overlap_tokens, counter, counts_add_up)
        for body, paragraphs, body_tokens in packed:
            text = f"{header}\n\n{body}" if header else body
            tokens = None if body_tokens is None else body_tokens + max(header_cost - 2, 0)
            pieces.append((section.heading, text, paragraphs, tokens))

    lines = [
        contexts.line(heading if heading_in_text else "", text) if contexts else ""
        for heading, text, _, _ in pieces
    ]
    embedded = [with_context(c, p[1]) for c, p in zip(lines, pieces, strict=True)]
    known = [p[3] for p in pieces]
    if contexts is None and all(tokens is not None for tokens in known):
        counts = [int(tokens or 0) for tokens in known]
    else:
        counts = counter(embedded) if embedded else []
    chunks = []
    for index, ((heading, text, paragraphs, _), line, tokens) in enumerate(
        zip(pieces, lines, counts, strict=True)
    ):
        if tokens > max_tokens:  # token counts are not quite additive: drop the line
            line, tokens = "", counter([text])[0]
        content_hash = hashlib.sha256(with_context(line, text).encode("utf-8")).hexdigest()
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
        if line:
            metadata["context"] = line
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
                context=line,
            )
        )
    return chunks


# The context line's share of a chunk's token budget at most.
CONTEXT_SHARE = 8


class _ContextLines:
    """The context line of each chunk of one document, within `reserve` tokens.

    A transcript's line names the meeting (the document's title: its file name unless the file
    has one) and the chunk's speakers, most words first: "Meeting: Budget review · Speakers:
    Alice, Bob". Another document's line is its title, unless the chunk's heading path, which
    starts its text, already begins with it. The words a searcher uses for "which meeting",
    "who said" or "which document" are then in every chunk, not only in the first one.
    """

    def __init__(
        self, doc: Document, count: TokenCounter, max_tokens: int, headings: list[str]
    ) -> None:
        """`headings`: the heading path each section's chunks start with ("" for none)."""
        self.count = count
        self.title = " ".join(doc.title.split())
        self.transcript = doc.format in TRANSCRIPT_FORMATS or bool(doc.speakers)
        self.speakers = set(doc.speakers)
        limit = max(max_tokens // CONTEXT_SHARE, 4)
        if self.transcript:
            title = self._fit(self.title, limit // 2)
            self.title = f"Meeting: {title}" if title else ""
            full = self._join(doc.speakers)
        else:
            self.title = self._fit(self.title, limit)
            full = self.title if any(self._titled(h) for h in headings) else ""
        self.reserve = min(count([full])[0] + 1, limit) if full else 0

    def _titled(self, heading: str) -> bool:
        """True when a chunk under `heading` needs the title (its heading path lacks it)."""
        return heading.split(" > ", 1)[0].casefold() != self.title.casefold()

    def _fit(self, text: str, limit: int) -> str:
        """`text`, cut by words to at most `limit` tokens."""
        words = text.split()
        while words and self.count([" ".join(words)])[0] > limit:
            words.pop()
        return " ".join(words)

    def line(self, heading: str, text: str) -> str:
        if not self.transcript:
            return self.title if self.reserve and self._titled(heading) else ""
        speakers = self._speakers(text)
        for n in range(len(speakers), 0, -1):
            line = self._join(speakers[:n])
            if self.count([line])[0] + 1 <= self.reserve:
                return line
        return self.title

    def _join(self, speakers: list[str]) -> str:
        parts = [self.title] if self.title else []
        if speakers:
            parts.append("Speakers: " + ", ".join(speakers))
        return " · ".join(parts)

    def _speakers(self, text: str) -> list[str]:
        """The speakers of labelled lines in `text`, most words first (then first seen)."""
        from tasks.transcripts.formats.labelled import match_label

        spoken: dict[str, int] = {}
        for raw in text.split("\n"):
            name, _, said = raw.partition(":")
            name = name.strip()
            if name not in self.speakers:
                label = match_label(raw.strip()) if self.speakers else None
                if label is None or label.name not in self.speakers:
                    continue
                name, said = label.name, label.text
            spoken[name] = spoken.get(name, 0) + len(said.split())
        return sorted(spoken, key=lambda name: -spoken[name])


def _count_cl100k(texts: list[str]) -> list[int]:
    # tiktoken's batch API starts a thread pool per call: slower for the short lists used here.
    return [count_tokens(text) for text in texts]


def chunk_id(source: str, chunk_index: int, content_hash: str) -> str:
    """Deterministic id of a chunk (see the module docstring for why these three parts)."""
    return hashlib.sha256(f"{source}\x1f{chunk_index}\x1f{content_hash}".encode()).hexdigest()


def _pack_section(
    section: _Section,
    budget: int,
    overlap_tokens: int,
    count: TokenCounter,
    counts_add_up: bool = False,
) -> list[tuple[str, list[int], int | None]]:
    """Greedy packing of a section's paragraphs into bodies of at most `budget` tokens, with
    each body's tokens when `counts_add_up` (else None: counted by the caller)."""
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

    bodies: list[tuple[str, list[int], int | None]] = []
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
        # Counted again only where tokens can span the joins: parts that add up to at most the
        # budget (2 spare a part, above) fit as they are. Chunking ~1,000 docs pages counted
        # each text about 3 times; 2 % of the CPU of embedding them (benchmarks/ingest_costs.py).
        while not counts_add_up and count([body])[0] > budget and len(members) > 1:
            if end - start > 1:
                end -= 1
                members.pop()
            else:
                members = members[-1:]
            body = _join(members)
        tokens = sum(u.cost for u in members) if counts_add_up else None
        bodies.append((body, sorted({u.paragraph for u in members}), tokens))
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
