"""Transcript discovery and parsing: every format, every kind of bad input, and invariants."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import InputError
from tasks.transcripts import (
    FORMATS,
    GROUP_CHARS,
    SUPPORTED_SUFFIXES,
    TURN_LIST_KEYS,
    Transcript,
    Utterance,
    discover_transcripts,
    parse_transcript,
    parse_transcript_text,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def parse_file(tmp_path: Path, name: str, content: str, fmt: str) -> Transcript:
    """`content` written as file `name` and parsed; checked to be read as format `fmt`."""
    transcript = parse_transcript(write(tmp_path, name, content))
    assert transcript.format == fmt
    return transcript


def turns(utterances: list[Utterance]) -> list[tuple[str | None, str]]:
    return [(u.speaker, u.text) for u in utterances]


def assert_contiguous(utterances: list[Utterance]) -> None:
    assert [u.index for u in utterances] == list(range(len(utterances)))


def test_supported_suffixes() -> None:
    assert {".txt", ".md", ".markdown", ".vtt", ".srt", ".json"} == SUPPORTED_SUFFIXES


def test_plain_text_paragraphs_become_utterances(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", "First  paragraph\nwrapped here.\n\n\nSecond one.\n")
    transcript = parse_transcript(path)
    assert transcript.format == "text"
    assert transcript.name == "notes"
    assert transcript.source == str(path)
    assert transcript.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert turns(transcript.utterances) == [
        (None, "First paragraph wrapped here."),
        (None, "Second one."),
    ]
    assert_contiguous(transcript.utterances)


def test_plain_text_without_blank_lines_splits_on_lines() -> None:
    utterances = parse_transcript_text("one\ntwo\nNote: three", "text")
    assert turns(utterances) == [(None, "one"), (None, "two"), (None, "Note: three")]


def test_prose_with_a_colon_is_not_taken_for_speakers() -> None:
    text = "We met on Monday. Result: nothing.\n\nBackground: it rained.\nThen it stopped."
    assert all(u.speaker is None for u in parse_transcript_text(text, "text"))


Times = dict[tuple[int, str], float | None]
"""(utterance index, "start" or "end") -> that time."""


@pytest.mark.parametrize(
    ("name", "fmt", "content", "expected", "times"),
    [
        pytest.param(
            "meeting.txt",
            "speaker",
            "Meeting about the roadmap\n\n"
            "Alice: Hello   everyone,\n"
            "thanks for coming.\n\n"
            "and welcome.\n"
            "[00:01:02] Dr. Smith: Glad to be here.\n"
            "Bob (01:05): Me too: really.\n"
            "SPEAKER_01: yes\n"
            "Speaker 2 [1:02:03.5]: ok\n"
            "Mary van Dyke: fine\n"
            "Note: not a speaker, continues Mary.\n",
            [
                (None, "Meeting about the roadmap"),
                ("Alice", "Hello everyone, thanks for coming. and welcome."),
                ("Dr. Smith", "Glad to be here."),
                ("Bob", "Me too: really."),
                ("SPEAKER_01", "yes"),
                ("Speaker 2", "ok"),
                ("Mary van Dyke", "fine Note: not a speaker, continues Mary."),
            ],
            {(2, "start"): 62.0, (3, "start"): 65.0, (4, "start"): None, (5, "start"): 3723.5},
            id="speaker-lines-with-continuations-and-timestamps",
        ),
        pytest.param(
            "sync.md",
            "markdown",
            "---\ntitle: Weekly sync\n---\n"
            "# Weekly sync\n\n"
            "**Alice:** Let's start.\n"
            "- **Bob**: Sure thing.\n"
            "* __Carol__: Ready.\n"
            "> Dan: quoted\n\n"
            "---\n"
            "## Part two\n\n"
            "Unlabelled paragraph after a heading.\n",
            [
                ("Alice", "Let's start."),
                ("Bob", "Sure thing."),
                ("Carol", "Ready."),
                ("Dan", "quoted"),
                (None, "Unlabelled paragraph after a heading."),
            ],
            {},
            id="markdown-strips-headings-bold-and-bullets",
        ),
        pytest.param(
            "talk.srt",
            "srt",
            "1\r\n00:00:01,000 --> 00:00:02,000\r\nALICE: Hi\r\n\r\n"
            "2\r\n00:00:02,000 --> 00:00:03,000\r\nthere.\r\n"
            "3\r\n00:00:03,000 --> 00:00:04,500\r\nBOB: Yo\r\n{\\an8}<i>man</i>\r\n\r\n"
            "text after a stray blank line\r\n\r\n"
            "4\r\n01:00:00,000 --> 01:00:01,000\r\nALICE: Bye\r\n",
            [
                ("ALICE", "Hi there."),
                ("BOB", "Yo man text after a stray blank line"),
                ("ALICE", "Bye"),
            ],
            {(1, "end"): 4.5, (2, "start"): 3600.0},
            id="srt-numbers-labels-tags-and-sloppy-blocks",
        ),
    ],
)
def test_turns_and_times_read_from_a_file(
    tmp_path: Path,
    name: str,
    fmt: str,
    content: str,
    expected: list[tuple[str | None, str]],
    times: Times,
) -> None:
    transcript = parse_file(tmp_path, name, content, fmt)
    assert turns(transcript.utterances) == expected
    assert {(i, end): getattr(transcript.utterances[i], end) for i, end in times} == times
    assert_contiguous(transcript.utterances)


def test_speaker_label_on_its_own_line_with_a_time() -> None:
    utterances = parse_transcript_text("Alice  0:03\nHello there.\n\nBob  0:10\nHi.", "text")
    assert turns(utterances) == [("Alice", "Hello there."), ("Bob", "Hi.")]
    assert [u.start for u in utterances] == [3.0, 10.0]


def test_forced_speaker_format_and_unknown_format() -> None:
    assert turns(parse_transcript_text("Intro\nAlice: hi\nmore\nmore\nmore", "speaker")) == [
        (None, "Intro"),
        ("Alice", "hi more more more"),
    ]
    with pytest.raises(ValueError, match="unknown transcript format"):
        parse_transcript_text("x", "docx")


def test_markdown_without_speakers_keeps_paragraphs(tmp_path: Path) -> None:
    content = "# Title\n\nSome notes here.\n\n## Section\n\nMore notes\nwrapped.\n"
    transcript = parse_transcript(write(tmp_path, "notes.markdown", content))
    assert turns(transcript.utterances) == [
        (None, "Some notes here."),
        (None, "More notes wrapped."),
    ]


VTT = """WEBVTT - a title
Kind: captions
Language: en

NOTE
This note spans
two lines.

STYLE
::cue { color: yellow }

intro
00:00:01.000 --> 00:00:02.500 align:start position:10%
<v Alice>Hello <b>there</b>,</v>

00:02.500 --> 00:04.000
<v Alice>how are you?</v>

3
00:00:04.000 --> 00:00:05.000
<v.loud Bob Smith>Fine &amp; <i>you</i>?</v>
<v Alice>Good.</v>

00:00:05.000 --> 00:00:06.000
<c.yellow>Still</c> <00:00:05.500>Alice.
"""


def test_vtt_voices_tags_notes_and_merging(tmp_path: Path) -> None:
    transcript = parse_file(tmp_path, "call.vtt", VTT, "vtt")
    assert turns(transcript.utterances) == [
        ("Alice", "Hello there, how are you?"),
        ("Bob Smith", "Fine & you?"),
        ("Alice", "Good. Still Alice."),
    ]
    first, second, third = transcript.utterances
    assert (first.start, first.end) == (1.0, 4.0)
    assert (second.start, second.end) == (4.0, 5.0)
    assert (third.start, third.end) == (4.0, 6.0)


def test_vtt_speaker_labels_in_cue_text(tmp_path: Path) -> None:
    content = (
        "WEBVTT\n\n"
        "00:01.000 --> 00:02.000\nALICE: Hi\n\n"
        "00:02.000 --> 00:03.000\nthere.\n\n"
        "00:03.000 --> 00:04.000\n>> BOB: Yo\n\n"
        "00:04.000 --> 00:05.000\nALICE: Bye\n\n"
        "00:05.000 --> 00:06.000\nBOB: Later\n"
    )
    assert turns(parse_transcript(write(tmp_path, "c.vtt", content)).utterances) == [
        ("ALICE", "Hi there."),
        ("BOB", "Yo"),
        ("ALICE", "Bye"),
        ("BOB", "Later"),
    ]


def test_vtt_one_off_colon_is_not_a_speaker() -> None:
    cues = "".join(
        f"00:00:0{i}.000 --> 00:00:0{i + 1}.000\n{text}\n\n"
        for i, text in enumerate(["So here we go", "Remember: be kind", "to each other", "ok"])
    )
    utterances = parse_transcript_text("WEBVTT\n\n" + cues, "vtt")
    assert turns(utterances) == [
        (None, "So here we go Remember: be kind to each other ok"),
    ]


def test_caption_merging_stops_at_the_group_limit() -> None:
    sentence = "word " * 90  # 450 characters
    cues = "".join(
        f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i + 1:02d},000\n{sentence}\n\n" for i in range(5)
    )
    utterances = parse_transcript_text(cues, "srt")
    assert [len(u.text) for u in utterances] == [899, 899, 449]
    assert all(len(u.text) <= GROUP_CHARS for u in utterances)
    assert [(u.start, u.end) for u in utterances] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]


def timed(utterances: list[Utterance]) -> list[tuple[str | None, str, float | None, float | None]]:
    return [(u.speaker, u.text, u.start, u.end) for u in utterances]


@pytest.mark.parametrize(
    ("name", "content", "expected", "warnings"),
    [
        pytest.param(
            "call.vtt",
            "WEBVTT\n\n"
            "00:00:0x.000 --> 00:00:01.000\n<v Dan>Before the first good cue.\n\n"
            "00:00:01.000 --> 00:00:02.000\n<v Alice>First from Alice.\n\n"
            "b2\n00:00:03.000 --> 00:00:0x.000\n<v Bob>Bob's own words.\n\n"
            "00:00:05.000 --> 00:00:06.000\n<v Carol>Carol's words.\n",
            [
                ("Dan", "Before the first good cue.", None, 1.0),
                ("Alice", "First from Alice.", 1.0, 2.0),
                ("Bob", "Bob's own words.", 3.0, None),
                ("Carol", "Carol's words.", 5.0, 6.0),
            ],
            [
                "line 3: malformed cue timing '00:00:0x.000 --> 00:00:01.000'; no start time;"
                " text kept",
                "line 10: malformed cue timing '00:00:03.000 --> 00:00:0x.000'; no end time;"
                " text kept",
            ],
            id="vtt",
        ),
        pytest.param(
            "talk.srt",
            "1\n00:00:01,000 --> 00:00:02,000\nALICE: Hi.\n\n"
            "2\n00:00:03,000 -> 00:00:04,000\nBOB: Arrow typo.\n\n"
            "3\n00:00:05;000 --> 00:00:06,000\nALICE: Semicolon.\n\n"
            "4\nCAROL: No timing line at all.\n\n"
            "5\n00:00:09,000 --> 00:00:10,000\nBOB: Bye.\n",
            [
                ("ALICE", "Hi.", 1.0, 2.0),
                ("BOB", "Arrow typo.", 3.0, 4.0),
                ("ALICE", "Semicolon.", None, 6.0),
                ("CAROL", "No timing line at all.", None, None),
                ("BOB", "Bye.", 9.0, 10.0),
            ],
            [
                "line 6: malformed cue timing '00:00:03,000 -> 00:00:04,000';"
                " read as 00:00:03,000 --> 00:00:04,000",
                "line 10: malformed cue timing '00:00:05;000 --> 00:00:06,000'; no start time;"
                " text kept",
                "line 13: cue 4 has no timing line; text kept",
            ],
            id="srt",
        ),
    ],
)
def test_malformed_cue_timings_keep_their_text_and_are_reported_by_line(
    tmp_path: Path,
    name: str,
    content: str,
    expected: list[tuple[str | None, str, float | None, float | None]],
    warnings: list[str],
) -> None:
    transcript = parse_transcript(write(tmp_path, name, content))
    assert timed(transcript.utterances) == expected
    assert transcript.warnings == warnings


def test_caption_text_with_arrows_or_dashes_is_not_a_timing() -> None:
    content = "WEBVTT\n\n00:01.000 --> 00:02.000\nClick File --> Save\nat 10:30 -- or later\n"
    assert turns(parse_transcript_text(content, "vtt")) == [
        (None, "Click File --> Save at 10:30 -- or later")
    ]


def test_captions_with_no_usable_cue_fail_with_the_malformed_lines(tmp_path: Path) -> None:
    content = "WEBVTT\n\n00:00:0x.000 --> 00:00:01.000\n\n"
    error = _raises(write(tmp_path, "empty.vtt", content), "no utterances found")
    assert "line 3: malformed cue timing" in error.message


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        ("WEBVTT\n\n00:01.000 --> 00:02.000\nHello.\n", "vtt"),
        ("1\n00:00:01,000 --> 00:00:02,000\nHello.\n", "srt"),
        ('{"segments": [{"start": 0, "end": 1, "text": "Hello."}]}', "whisper"),
    ],
)
def test_txt_content_overrides_the_extension(tmp_path: Path, content: str, fmt: str) -> None:
    transcript = parse_file(tmp_path, "export.txt", content, fmt)
    assert turns(transcript.utterances) == [(None, "Hello.")]


def test_whisper_segments(tmp_path: Path) -> None:
    data = {
        "text": "ignored when segments exist",
        "language": "en",
        "segments": [
            {"id": 0, "start": 0.0, "end": 2.5, "text": " Hello there.", "speaker": "SPEAKER_00"},
            {"id": 1, "start": 2.5, "end": 4.0, "text": "   "},
            {
                "id": 2,
                "start": 4.0,
                "end": 6.0,
                "text": " General Kenobi.",
                "speaker": "SPEAKER_01",
            },
            {"id": 3, "start": 6.0, "end": 7.0, "text": " Indeed."},
        ],
    }
    transcript = parse_file(tmp_path, "audio.json", json.dumps(data), "whisper")
    assert turns(transcript.utterances) == [
        ("SPEAKER_00", "Hello there."),
        ("SPEAKER_01", "General Kenobi."),
        (None, "Indeed."),
    ]
    assert [(u.start, u.end) for u in transcript.utterances] == [(0, 2.5), (4, 6), (6, 7)]
    assert_contiguous(transcript.utterances)


def test_whisper_text_only_is_grouped_into_sentences() -> None:
    sentences = [f"This is sentence number {i} of the talk." for i in range(100)]
    utterances = parse_transcript_text(json.dumps({"text": " ".join(sentences)}), "json")
    assert len(utterances) > 1
    assert all(u.speaker is None and len(u.text) <= GROUP_CHARS for u in utterances)
    assert all(u.text.endswith(".") for u in utterances)
    assert " ".join(u.text for u in utterances) == " ".join(sentences)


def test_whisper_text_only_keeps_paragraphs() -> None:
    data = {"text": "First paragraph.\r\n\r\nSecond paragraph.", "language": "en"}
    assert turns(parse_transcript_text(json.dumps(data), "whisper")) == [
        (None, "First paragraph."),
        (None, "Second paragraph."),
    ]


def test_json_list_of_turns(tmp_path: Path) -> None:
    data = [
        {"speaker": "Alice", "text": "Hi  there", "start": "00:00:01.5", "end": 3},
        {"name": "Bob", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Part one"}, "part two"]},
        {"speaker_name": "Carol", "utterance": "Third", "start_time": 4, "end_time": 5},
        {"speaker": 2, "text": "Numbered speaker"},
        {"speaker": "Dan", "text": "   "},
        {"speaker": "Eve", "text": None},
        "A bare string turn",
    ]
    transcript = parse_file(tmp_path, "turns.json", json.dumps(data), "json")
    assert turns(transcript.utterances) == [
        ("Alice", "Hi there"),
        ("Bob", "Hello"),
        ("user", "Part one part two"),
        ("Carol", "Third"),
        ("2", "Numbered speaker"),
        (None, "A bare string turn"),
    ]
    assert (transcript.utterances[0].start, transcript.utterances[0].end) == (1.5, 3.0)
    assert (transcript.utterances[3].start, transcript.utterances[3].end) == (4.0, 5.0)
    assert_contiguous(transcript.utterances)


@pytest.mark.parametrize("key", TURN_LIST_KEYS)
def test_json_object_holding_turns(key: str) -> None:
    data = {"meta": {"id": 1}, key: [{"speaker": "A", "text": "one"}, {"role": "B", "text": "two"}]}
    assert turns(parse_transcript_text(json.dumps(data), "json")) == [("A", "one"), ("B", "two")]


def test_json_turns_nested_one_level() -> None:
    data = {"transcript": {"utterances": [{"speaker": "A", "text": "nested"}]}}
    assert turns(parse_transcript_text(json.dumps(data), "json")) == [("A", "nested")]


def test_bom_crlf_and_whitespace_are_normalised(tmp_path: Path) -> None:
    content = "\ufeffAlice:\tHello\r\n   world\u00a0 again\r\nBob: Bye\r\n"
    path = write(tmp_path, "bom.txt", content.encode("utf-8"))
    transcript = parse_transcript(path, source="inputs/bom.txt")
    assert transcript.source == "inputs/bom.txt"
    assert turns(transcript.utterances) == [("Alice", "Hello world again"), ("Bob", "Bye")]


def test_long_line_is_split_into_sentence_groups() -> None:
    sentences = [f"Sentence {i} says something moderately long." for i in range(3000)]
    text = " ".join(sentences)
    assert len(text) > 100_000
    utterances = parse_transcript_text("Alice: " + text, "text")
    assert len(utterances) > 100
    assert {u.speaker for u in utterances} == {"Alice"}
    assert all(len(u.text) <= GROUP_CHARS for u in utterances)
    assert " ".join(u.text for u in utterances) == text
    assert_contiguous(utterances)


def test_long_line_without_sentences_is_split_on_whitespace() -> None:
    text = " ".join(["word"] * 30_000)
    utterances = parse_transcript_text(text, "text")
    assert all(len(u.text) <= GROUP_CHARS for u in utterances)
    assert " ".join(u.text for u in utterances) == text


def test_unbreakable_run_below_the_limit_is_kept() -> None:
    assert len(parse_transcript_text("x" * 50_000, "text")[0].text) == 50_000


def _raises(path: Path, match: str, max_bytes: int = 20_000_000) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        parse_transcript(path, max_bytes=max_bytes)
    assert info.value.source == str(path)
    return info.value


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.txt", b"", "file is empty"),
        ("blank.txt", b"\xef\xbb\xbf \n\t\r\n", "file is empty"),
        ("binary.txt", b"Alice: hi\x00\x01\x02", "binary content: NUL byte at offset 9"),
        ("utf16.txt", "Alice: hi".encode("utf-16"), "UTF-16"),
        (
            "latin1.txt",
            "Alice: café".encode("latin-1"),
            r"invalid UTF-8: byte 0xe9 at byte offset 10",
        ),
        ("bomlatin1.txt", b"\xef\xbb\xbfAb\xff", "at byte offset 5"),
        ("notes.docx", b"Alice: hi", "unsupported file extension '.docx'"),
        ("README", b"Alice: hi", "file has no extension"),
        ("bad.json", b'{"segments": [\n  {"text": "hi",}\n]}', "malformed JSON at line 2, column"),
        ("truncated.json", b'[{"speaker": "A"', "malformed JSON at line 1"),
        ("number.json", b"42", "unrecognised shape: found a number"),
        ("keys.json", b'{"foo": [1], "bar": 2}', "unrecognised shape: found an object with keys"),
        ("items.json", b"[1, 2]", r"unrecognised shape: item 0 is a number"),
        ("notext.json", b'{"turns": [{"speaker": "A", "said": "x"}]}', r"turns\[0\] has no text"),
        ("badtext.json", b'[{"speaker": "A", "text": 5}]', r"item 0\.text is a number"),
        ("emptylist.json", b"[]", "no utterances found"),
        ("emptyturns.json", b'{"turns": []}', "no utterances found"),
        ("blanks.json", b'[{"speaker": "A", "text": "  "}]', "no utterances found"),
        ("header.vtt", b"WEBVTT\n\nNOTE nothing here\n", "no utterances found in this vtt"),
        ("nocues.srt", b"just some words\n", "no utterances found in this srt"),
        ("tags.srt", b"1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n", "no utterances found"),
        ("heading.md", b"# Only a heading\n\n---\n", "no utterances found"),
        ("nested.json", b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
    ],
)
def test_bad_files_raise_input_error(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    _raises(write(tmp_path, name, content), match)


def test_missing_file(tmp_path: Path) -> None:
    error = _raises(tmp_path / "nope.txt", "file not found")
    assert error.hint


def test_folder_is_not_a_regular_file(tmp_path: Path) -> None:
    _raises(write(tmp_path, "dir.txt/inner.txt", "x").parent, "not a regular file")


def test_file_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, "big.txt", "Alice: hello\n" * 10)
    _raises(path, "file is too large: 130 bytes, the limit is 100", max_bytes=100)
    assert parse_transcript(path, max_bytes=130).utterances


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("huge.txt", "intro\n" + "a" * 150_000 + "\n", "enormous line: line 2 has 150,000"),
        ("huge.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\n" + "b" * 100_001, "line 4 has 100,001"),
        ("huge.json", json.dumps([{"text": "ok " + "c" * 120_000}]), "item 0 has 120,000"),
    ],
)
def test_enormous_unsplittable_line(tmp_path: Path, name: str, content: str, match: str) -> None:
    error = _raises(write(tmp_path, name, content), match)
    assert "no sentence or whitespace break" in error.message


def test_discover_transcripts(tmp_path: Path) -> None:
    for name in [
        "b.txt",
        "a.vtt",
        "sub/c.SRT",
        "sub/deeper/d.json",
        "sub/skip.pdf",
        ".hidden.txt",
        ".git/e.txt",
        "sub/.cache/f.md",
    ]:
        write(tmp_path, name, "Alice: hi")
    explicit = write(tmp_path / "elsewhere", "g.md", "hi")
    unknown = write(tmp_path / "elsewhere", "h.docx", "hi")
    missing = tmp_path / "missing"

    files, problems = discover_transcripts(
        [tmp_path, explicit, missing, unknown, tmp_path / "b.txt"]
    )

    assert files == [
        (tmp_path / "a.vtt", Path("a.vtt")),
        (tmp_path / "b.txt", Path("b.txt")),
        (tmp_path / "elsewhere" / "g.md", Path("elsewhere/g.md")),  # found in tmp_path first
        (tmp_path / "sub" / "c.SRT", Path("sub/c.SRT")),
        (tmp_path / "sub" / "deeper" / "d.json", Path("sub/deeper/d.json")),
    ]
    assert [source for source, _ in problems] == [str(missing), str(unknown)]
    assert problems[0][1] == "no such file or folder"
    assert "unsupported file extension '.docx'" in problems[1][1]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_discover_and_parse_reject_a_pipe(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.txt"
    os.mkfifo(pipe)
    assert discover_transcripts([pipe]) == ([], [(str(pipe), "not a regular file or folder")])
    _raises(pipe, "not a regular file")


SPEAKERS = ["Alice", "Bob", "Dr. Smith", "SPEAKER_01", "Speaker 2", "Mary van Dyke", "Q"]
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz.,!?'ÄéÜ:", min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SPEAKERS),
            st.lists(WORDS, min_size=1, max_size=12).map(" ".join),
            st.sampled_from(["\n", "\n\n", "\r\n"]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_speaker_transcripts_round_trip(lines: list[tuple[str, str, str]]) -> None:
    text = "".join(f"{speaker}: {words}{sep}" for speaker, words, sep in lines)
    utterances = parse_transcript_text(text, "text")
    assert turns(utterances) == [(speaker, words) for speaker, words, _ in lines]
    assert_contiguous(utterances)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(exclude_characters=":"), max_size=40), max_size=40))
def test_plain_text_keeps_every_word_in_order(lines: list[str]) -> None:
    text = "\n".join(lines)
    if not text.split():
        with pytest.raises(InputError, match="no utterances found"):
            parse_transcript_text(text, "text")
        return
    utterances = parse_transcript_text(text, "text")
    assert_contiguous(utterances)
    assert all(u.speaker is None and u.text == " ".join(u.text.split()) for u in utterances)
    assert " ".join(u.text for u in utterances).split() == text.split()


FORMAT_BITS = st.sampled_from(
    [
        *("WEBVTT", "NOTE", "1", "00:01.000 --> 00:02.000", "00:00:01,000 --> 00:00:02,000 x"),
        *("", "<v Al>", "</v>", "Alice: hi", "# h", "**Bob**:", "- item", "{", "[", '"text"'),
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(FORMAT_BITS, st.text(max_size=20)), max_size=30),
    st.sampled_from(sorted(FORMATS)),
)
def test_any_text_parses_or_raises_input_error(bits: list[str], fmt: str) -> None:
    try:
        utterances = parse_transcript_text("\n".join(bits), fmt)
    except InputError:
        return
    assert_contiguous(utterances)
    assert all(u.text.strip() and u.text == " ".join(u.text.split()) for u in utterances)
