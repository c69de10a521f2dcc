"""Output names of summaries: unique, stable, mirroring the input folders."""

from __future__ import annotations

from pathlib import Path

from tasks.summaries import ActionItem, MeetingNotes
from tasks.summaries.outputs import output_names
from tasks.summaries.speakers import keep_to_speakers, known_speaker, speakers_of
from tasks.transcripts import Utterance, discover_transcripts


def names_for(*paths: Path) -> dict[str, str]:
    files, problems = discover_transcripts(list(paths))
    assert not problems
    return {str(f.path): name for f, name in zip(files, output_names(files), strict=True)}


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("Alice: hi")


def test_a_flat_folder_keeps_its_names(tmp_path: Path) -> None:
    touch(tmp_path, "standup.txt", "retro.md", "notes.txt", "notes.md", "talk.en.vtt")
    assert names_for(tmp_path) == {
        str(tmp_path / "standup.txt"): "standup",
        str(tmp_path / "retro.md"): "retro",
        str(tmp_path / "notes.txt"): "notes_txt",
        str(tmp_path / "notes.md"): "notes_md",
        str(tmp_path / "talk.en.vtt"): "talk.en",
    }


def test_sub_folders_are_mirrored_and_names_ignore_the_other_files(tmp_path: Path) -> None:
    touch(tmp_path, "a/notes.txt", "b/notes.txt", "b/c/notes.txt", "notes.txt")
    assert sorted(names_for(tmp_path).values()) == ["a/notes", "b/c/notes", "b/notes", "notes"]
    # a file given directly is named from its own folder, as when its folder is the input
    assert names_for(tmp_path / "b" / "notes.txt") == {str(tmp_path / "b" / "notes.txt"): "notes"}
    assert names_for(tmp_path / "b")[str(tmp_path / "b" / "notes.txt")] == "notes"


def test_one_file_name_under_two_inputs_gets_two_names_whatever_the_order(
    tmp_path: Path,
) -> None:
    touch(tmp_path, "one/x.txt", "two/x.txt", "two/y.txt")
    given = [tmp_path / "one" / "x.txt", tmp_path / "two"]
    names = names_for(*given)
    assert names == names_for(*reversed(given))
    assert names[str(tmp_path / "two" / "y.txt")] == "y"
    first, second = names[str(tmp_path / "one" / "x.txt")], names[str(tmp_path / "two" / "x.txt")]
    assert first != second
    assert first.startswith("x_txt-") and second.startswith("x_txt-")


def test_names_that_differ_only_in_case_are_kept_apart(tmp_path: Path) -> None:
    touch(tmp_path, "one/Notes.txt", "two/notes.txt")
    names = names_for(tmp_path / "one", tmp_path / "two")
    assert len({name.casefold() for name in names.values()}) == 2


def test_known_speakers_are_written_as_the_transcript_writes_them() -> None:
    speakers = ["Alice Smith", "Bob", "Ms. Lee (Toronto, Liberal)", "Dr. Chen", "Chen Wu"]
    assert known_speaker("alice", speakers) == "Alice Smith"
    assert known_speaker("BOB", speakers) == "Bob"
    assert known_speaker("Ms. Lee", speakers) == "Ms. Lee"
    assert known_speaker("Ms. Lee (Toronto, Liberal)", speakers) == "Ms. Lee (Toronto, Liberal)"
    assert known_speaker("Chen", speakers) is None  # two speakers have that name
    assert known_speaker("Mallory", speakers) is None
    assert known_speaker("", speakers) is None and known_speaker(None, speakers) is None


def test_notes_keep_only_speakers_as_participants_and_owners() -> None:
    notes = MeetingNotes(
        summary="Budget review.",
        key_points=[],
        action_items=[
            ActionItem(description="Send the budget", owner="alice", due=None),
            ActionItem(description="Wire the money", owner="Mallory", due="Monday"),
        ],
        decisions=[],
        participants=["Mallory", "Alice", "Bob", "alice"],
    )
    kept = keep_to_speakers(notes, speakers_of([_utterance("Alice"), _utterance("Bob")]))
    assert kept.participants == ["Alice", "Bob"]
    assert [(i.description, i.owner) for i in kept.action_items] == [
        ("Send the budget", "Alice"),
        ("Wire the money", None),
    ]


def _utterance(speaker: str) -> Utterance:
    return Utterance(index=0, speaker=speaker, text="Hello.")
