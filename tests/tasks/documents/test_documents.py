"""Document discovery, loading of every format, bad inputs with their reasons, and chunking."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.documents import (
    Document,
    chunk_document,
    chunk_id,
    discover_documents,
    load_document,
    split_sections,
)
from tasks.errors import InputError, NothingToIndex, UsageError
from tasks.tokens import count_tokens


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def text_pdf(*pages: str) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, text in zip(page_ids, pages, strict=True):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def blank_pdf(password: str | None = None) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    if password:
        writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


HANDBOOK = """---
title: Employee Handbook
---
# Handbook

Welcome to Fernhollow. This handbook explains how we work.

## Leave

Everyone gets leave.

### Vacation

Employees accrue 25 days of paid vacation per year.

```bash
# a comment, not a heading
echo hi
```

### Sick leave

Tell your manager before 10:00.

Expenses
--------

Submit receipts within 30 days.
"""


def test_discover_recurses_sorts_skips_hidden_and_filters(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    for name in ["b.md", "a.txt", "sub/c.html", "sub/deep/d.pdf", "image.png", "notes.tmp"]:
        write(root / name, "x")
    write(root / ".git" / "config.md", "x")
    write(root / ".hidden.md", "x")
    write(root / "drafts" / "e.md", "x")

    found = discover_documents([root])
    assert [d.source for d in found] == [
        "a.txt",
        "b.md",
        "drafts/e.md",
        "sub/c.html",
        "sub/deep/d.pdf",
    ]
    assert all(d.root == root for d in found)

    only_md = discover_documents([root], include=["*.md"], exclude=["drafts/*"])
    assert [d.source for d in only_md] == ["b.md"]

    # A file named explicitly is taken even with an unsupported suffix (load reports it).
    explicit = discover_documents([root / "image.png", root / "b.md", root])
    assert [d.source for d in explicit].count("b.md") == 1
    assert "image.png" in [d.source for d in explicit]

    with pytest.raises(UsageError, match="no such file"):
        discover_documents([tmp_path / "missing"])


def test_markdown_headings_build_the_path_and_code_fences_are_not_headings(tmp_path: Path) -> None:
    doc = load_document(write(tmp_path / "handbook.md", HANDBOOK), root=tmp_path)
    assert doc.title == "Employee Handbook"  # from front matter
    assert doc.format == "markdown"
    assert doc.source == "handbook.md"
    assert "title:" not in doc.text

    chunks = chunk_document(doc, max_tokens=200, overlap_tokens=0)
    headings = [c.heading for c in chunks]
    assert headings == [
        "Handbook",
        "Handbook > Leave",
        "Handbook > Leave > Vacation",
        "Handbook > Leave > Sick leave",
        "Handbook > Expenses",
    ]
    vacation = chunks[2]
    assert vacation.text.startswith("Handbook > Leave > Vacation\n\n")
    assert "# a comment, not a heading" in vacation.text
    assert vacation.metadata["heading"] == "Handbook > Leave > Vacation"
    assert vacation.metadata["title"] == "Employee Handbook"
    assert vacation.metadata["chunk_count"] == len(chunks)


def test_html_becomes_clean_text_with_markdown_headings(tmp_path: Path) -> None:
    html = """<!doctype html><html><head><title>Remote work &amp; you</title>
    <style>p { color: red }</style><script>var s = "<p>hidden</p>";</script></head>
    <body><header><nav><a href="/">Home</a> <a href="/hr">HR</a></nav>Intranet banner</header>
    <main><article><header><h1>Remote <em>work</em> policy</h1></header>
    <p>You may work   remotely<br>two days a week.</p>
    <h2>Equipment</h2><ul><li>Laptop</li><li>Monitor &lt;27&quot;&gt;</li></ul>
    </article></main><footer>Copyright 2025 Fernhollow</footer></body></html>"""
    doc = load_document(write(tmp_path / "remote.html", html), root=tmp_path)
    assert doc.title == "Remote work & you"
    assert doc.format == "html"
    assert "# Remote work policy" in doc.text
    assert "## Equipment" in doc.text
    assert "You may work remotely\ntwo days a week." in doc.text
    assert '- Monitor <27">' in doc.text
    for gone in ("color: red", "hidden", "Home", "Intranet banner", "Copyright"):
        assert gone not in doc.text
    chunks = chunk_document(doc, 200)
    assert [c.heading for c in chunks] == ["Remote work policy", "Remote work policy > Equipment"]


def test_plain_text_has_no_headings(tmp_path: Path) -> None:
    doc = load_document(
        write(tmp_path / "notes.txt", "\ufeff# not a heading\r\n\r\nSecond paragraph.\r\n"),
        root=tmp_path,
    )
    assert doc.title == "notes"
    assert doc.text == "# not a heading\n\nSecond paragraph."
    assert [c.heading for c in chunk_document(doc, 100)] == [""]


def test_pdf_text_is_extracted_per_page(tmp_path: Path) -> None:
    path = write(tmp_path / "safety.pdf", text_pdf("Wear safety glasses.", "Badge in at the door."))
    doc = load_document(path, root=tmp_path)
    assert doc.format == "pdf"
    assert doc.metadata["pages"] == 2
    assert "Wear safety glasses." in doc.text
    assert "Badge in at the door." in doc.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (blank_pdf(), "no extractable text in 1 PDF page"),
        (blank_pdf(password="secret"), "encrypted PDF: a password is needed"),
        (b"%PDF-1.4\n1 0 obj\n<< garbage", "unreadable PDF"),
        (b"hello, not a pdf at all", "not a PDF file"),
    ],
    ids=["image-only", "encrypted", "damaged", "not-pdf"],
)
def test_unusable_pdf_says_why(tmp_path: Path, content: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)) as caught:
        load_document(write(tmp_path / "bad.pdf", content), root=tmp_path)
    assert caught.value.source == "bad.pdf"


def test_jsonl_records_become_sections(tmp_path: Path) -> None:
    lines = [
        {"id": "faq-1", "question": "Does Canopy support SSO?", "answer": "Yes, SAML 2.0."},
        {"title": "Ports", "text": "Robots need outbound TCP 443.", "tags": ["network", "it"]},
    ]
    path = write(tmp_path / "faq.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    doc = load_document(path, root=tmp_path)
    assert doc.metadata["records"] == 2
    chunks = chunk_document(doc, 200)
    assert [c.heading for c in chunks] == ["Does Canopy support SSO?", "Ports"]
    assert "answer: Yes, SAML 2.0." in chunks[0].text
    assert chunks[1].text == "Ports\n\nRobots need outbound TCP 443.\n\ntags: network, it"

    custom = load_document(path, root=tmp_path, json_text_field="answer")
    assert "Does Canopy support SSO?\n\nYes, SAML 2.0." in custom.text


def test_json_nested_records_become_subsections(tmp_path: Path) -> None:
    data = {
        "company": "Fernhollow",
        "teams": [
            {"name": "Platform", "lead": "Lena", "subteams": [{"name": "API", "lead": "Sam"}]},
            {"name": "People", "lead": "Grace"},
        ],
    }
    doc = load_document(write(tmp_path / "teams.json", json.dumps(data)), root=tmp_path)
    headings = [c.heading for c in chunk_document(doc, 200)]
    assert headings == [
        "",
        "teams > Platform",
        "teams > Platform > subteams > API",
        "teams > People",
    ]


def test_transcripts_are_one_paragraph_per_utterance(tmp_path: Path) -> None:
    vtt = (
        "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\n<v Priya>Shall we start?</v>\n\n"
        "00:00:05.000 --> 00:00:09.000\n<v Owen>Yes. The telemetry doc is ready.</v>\n"
    )
    srt = (
        "1\n00:00:01,000 --> 00:00:03,000\nHello there.\n\n2\n00:00:04,000 --> 00:00:06,000\nBye.\n"
    )
    doc = load_document(write(tmp_path / "review.vtt", vtt), root=tmp_path)
    assert doc.format == "vtt"
    assert doc.text == "Priya: Shall we start?\n\nOwen: Yes. The telemetry doc is ready."
    chunks = chunk_document(doc, 200)
    assert (chunks[0].metadata["first_utterance"], chunks[0].metadata["last_utterance"]) == (0, 1)
    assert load_document(write(tmp_path / "call.srt", srt), root=tmp_path).format == "srt"


def test_json_transcripts_load_as_utterances_and_chunks_carry_their_span(tmp_path: Path) -> None:
    turns = [
        {"speaker": "Priya", "content": "Shall we start with the telemetry doc?"},
        {"speaker": "Owen", "content": "  "},  # empty: dropped, as the summariser drops it
        {"speaker": "Owen", "content": "Yes.\nIt is ready for review."},
        {"speaker": "Priya", "content": "Good. Then the launch date."},
    ]
    listed = load_document(write(tmp_path / "turns.json", json.dumps(turns)), root=tmp_path)
    held = load_document(
        write(tmp_path / "meeting.json", json.dumps({"id": 7, "meeting_transcripts": turns})),
        root=tmp_path,
    )
    whisper = {"text": "Hi.", "segments": [{"start": 0.0, "end": 1.0, "text": " Hi."}]}
    segments = load_document(write(tmp_path / "w.json", json.dumps(whisper)), root=tmp_path)

    assert listed.format == held.format == segments.format == "json-transcript"
    assert (
        listed.text
        == held.text
        == (
            "Priya: Shall we start with the telemetry doc?\n\n"
            "Owen: Yes. It is ready for review.\n\n"
            "Priya: Good. Then the launch date."
        )
    )
    assert listed.metadata == {"utterances": 3}
    chunks = chunk_document(listed, 16, 0)
    assert len(chunks) > 1
    spans = [(c.metadata["first_utterance"], c.metadata["last_utterance"]) for c in chunks]
    assert spans[0][0] == 0 and spans[-1][1] == 2
    assert all(first <= last for first, last in spans)
    assert segments.text == "Hi."


def test_json_records_with_a_name_and_text_stay_records(tmp_path: Path) -> None:
    people = [{"name": "Lena", "text": "Leads the platform team."}, {"name": "Sam", "text": "API."}]
    doc = load_document(write(tmp_path / "people.json", json.dumps(people)), root=tmp_path)
    assert doc.format == "json"
    assert [c.heading for c in chunk_document(doc, 200)] == ["Lena", "Sam"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("binary.txt", b"abc\x00\x01\x02def", "binary content: NUL byte at offset 3"),
        ("latin1.md", "café".encode("latin-1"), "invalid UTF-8: byte 0xe9 at byte offset 3"),
        ("records.jsonl", b'{"text": "ok"}\n{"text": broken\n', "line 2 is not valid JSON"),
        ("data.json", b'{"text": "ok",}', "malformed JSON at line 1"),
        ("numbers.json", b"[1, 2]", "record 1 is a JSON number"),
        ("image.png", b"\x89PNG", "unsupported file type '.png'"),
    ],
)
def test_bad_inputs_say_why(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)) as caught:
        load_document(write(tmp_path / name, content), root=tmp_path)
    assert caught.value.source == name
    assert not isinstance(caught.value, NothingToIndex)  # a defect, not an empty page


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.md", b"", "empty file"),
        ("blank.txt", b"  \n\n\t\n", "only whitespace"),
        ("api.md", b"---\ntitle: Client API\nsidebar: 3\n---\n\n", "no text after the front"),
        ("crlf.md", b"---\r\ntitle: X\r\n---\r\n", "no text after the front matter"),
        ("page.html", b"<html><head><title>T</title></head><body> </body></html>", "no visible"),
        ("none.json", b"[]", "no records with text"),
    ],
)
def test_documents_with_nothing_to_index_say_so(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    with pytest.raises(NothingToIndex, match=re.escape(reason)) as caught:
        load_document(write(tmp_path / name, content), root=tmp_path)
    assert caught.value.source == name


def test_too_large_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.txt", "word " * 1000)
    with pytest.raises(InputError, match=r"over the 0\.0 MB limit"):
        load_document(path, root=tmp_path, max_bytes=1000)


def doc_of(text: str, fmt: str = "markdown", source: str = "doc.md") -> Document:
    return Document(
        source=source, title="Doc", text=text, document_hash="h" * 64, format=fmt, metadata={}
    )


def test_long_paragraphs_split_on_sentences_with_overlap() -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(60)]
    doc = doc_of("# Policy\n\n" + " ".join(sentences))
    chunks = chunk_document(doc, max_tokens=60, overlap_tokens=15)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.token_count == count_tokens(chunk.embedded_text) <= 60
        assert chunk.text.startswith("Policy\n\n")
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)
    # Consecutive chunks share their boundary sentence (the overlap).
    for before, after in itertools.pairwise(chunks):
        last_sentence = re.split(r"(?<=\.)\s+", before.text)[-1]
        assert last_sentence in after.text


def test_chunk_ids_are_deterministic_and_depend_on_source_position_and_text() -> None:
    text = "# A\n\nSame paragraph.\n\n# B\n\nSame paragraph."
    first = chunk_document(doc_of(text), 100)
    again = chunk_document(doc_of(text), 100)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    renamed = chunk_document(doc_of(text, source="moved/doc.md"), 100)
    assert not {c.id for c in first} & {c.id for c in renamed}
    assert [c.content_hash for c in first] == [c.content_hash for c in renamed]
    assert first[0].id == chunk_id("doc.md", 0, first[0].content_hash)


WORDS = st.sampled_from(
    ["robot", "shelf", "scan", "aisle", "price", "alert", "store", "battery", "dock", "map"]
)
SENTENCE = st.lists(WORDS, min_size=1, max_size=12).map(lambda w: " ".join(w).capitalize() + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=30).map(" ".join)
BLOCK = st.one_of(
    PARAGRAPH,
    st.tuples(st.integers(1, 4), SENTENCE).map(lambda h: "#" * h[0] + " " + h[1].rstrip(".")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(BLOCK, min_size=1, max_size=15),
    max_tokens=st.integers(30, 200),
    overlap=st.integers(0, 40),
)
def test_chunking_invariants(blocks: list[str], max_tokens: int, overlap: int) -> None:
    doc = doc_of("\n\n".join(blocks))
    chunks = chunk_document(doc, max_tokens, overlap)
    paragraphs = [p for section in split_sections(doc.text) for _, p in section.paragraphs]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert len({c.id for c in chunks}) == len(chunks)
    for chunk in chunks:
        assert 0 < chunk.token_count <= max_tokens
        assert chunk.token_count == count_tokens(chunk.embedded_text)
        assert chunk.metadata["chunk_count"] == len(chunks)
    for paragraph in paragraphs:
        if count_tokens(paragraph) <= max_tokens // 2:
            assert any(paragraph in c.text for c in chunks)
    # Every word of every paragraph survives, in order (overlap and headings only add words).
    chunk_words = iter(re.findall(r"\w+", " ".join(c.text for c in chunks)))
    assert all(word in chunk_words for p in paragraphs for word in re.findall(r"\w+", p))
    assert chunk_document(doc, max_tokens, overlap) == chunks


MEETING = [
    ("Alice", "Welcome all. Today we settle the remote control's battery and its casing."),
    ("Bob", "The battery should be rechargeable; a dock on the coffee table charges it."),
    ("Alice", "And the casing?"),
    ("Carol", "Rubber, in two colours. Users told us plastic feels cheap in the hand."),
    ("Bob", "Rubber costs more, so the budget for the chip gets smaller."),
    ("Dave", "Then we drop the voice recognition and keep the scroll wheel."),
] * 3


@pytest.mark.parametrize("suffix", [".txt", ".json"])
def test_transcript_chunks_carry_the_meeting_and_their_own_speakers(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"remote-design-kickoff{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps([{"speaker": s, "text": t} for s, t in MEETING]))
    else:
        path.write_text("\n".join(f"{s}: {t}" for s, t in MEETING))
    doc = load_document(path, root=tmp_path)
    assert doc.speakers == ["Alice", "Bob", "Carol", "Dave"]
    chunks = chunk_document(doc, max_tokens=120, context=True)
    assert len(chunks) > 2
    assert any(", " in c.context for c in chunks)  # a chunk with several speakers names them
    for chunk in chunks:
        spoken: dict[str, int] = {}
        for line in chunk.text.split("\n"):
            name, _, said = line.partition(": ")
            if name in doc.speakers:
                spoken[name] = spoken.get(name, 0) + len(said.split())
        most_first = sorted(spoken, key=lambda name: -spoken[name])
        assert chunk.context.startswith("Meeting: remote-design-kickoff · Speakers: ")
        named = chunk.context.split("Speakers: ")[1].split(", ")
        assert named == most_first[: len(named)]  # the most words first, as many as fit
        assert "Meeting:" not in chunk.text  # the text stored, shown and cited is the transcript's
        assert chunk.embedded_text == f"{chunk.context}\n{chunk.text}"
        assert chunk.token_count == count_tokens(chunk.embedded_text) <= 120
        assert chunk.metadata["context"] == chunk.context


def test_prose_with_a_colon_is_not_a_transcript(tmp_path: Path) -> None:
    path = tmp_path / "release.txt"
    path.write_text("Release notes for 2.4.\n\nNote: the export crash on Windows is fixed.\n")
    doc = load_document(path, root=tmp_path)
    assert doc.speakers == []
    assert [c.context for c in chunk_document(doc, max_tokens=60, context=True)] == ["release"]


def test_document_chunks_carry_the_title_their_heading_path_lacks(tmp_path: Path) -> None:
    titled = tmp_path / "leave.md"
    titled.write_text("---\ntitle: Employee handbook\n---\n# Leave\n\nTake 25 days a year.\n")
    same = tmp_path / "travel.md"
    same.write_text("# Travel policy\n\n## Booking\n\nBook two weeks ahead.\n")
    [leave] = chunk_document(load_document(titled, root=tmp_path), max_tokens=60, context=True)
    assert leave.context == "Employee handbook"
    assert leave.text.startswith("Leave\n\n")
    [booking] = chunk_document(load_document(same, root=tmp_path), max_tokens=60, context=True)
    assert booking.text.startswith("Travel policy > Booking\n\n")
    assert booking.context == ""  # the heading path already names the document


def test_without_context_chunks_are_the_text_alone(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "kickoff.txt"
    path.write_text("\n".join(f"{s}: {t}" for s, t in MEETING))
    doc = load_document(path, root=tmp_path)
    plain = chunk_document(doc, max_tokens=60)  # the default
    with_line = chunk_document(doc, max_tokens=60, context=True)
    for chunk in plain:
        assert chunk.context == "" and chunk.embedded_text == chunk.text
        assert "context" not in chunk.metadata
        assert chunk.content_hash == hashlib.sha256(chunk.text.encode()).hexdigest()
    # the line changes what is embedded, so the hashes (which find stored vectors) and ids differ
    assert not {c.content_hash for c in plain} & {c.content_hash for c in with_line}
