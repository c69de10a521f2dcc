"""Final notes: unique output names, names kept to speakers, key points that add."""

from __future__ import annotations

from pathlib import Path

from tasks.summaries import ActionItem, MeetingNotes
from tasks.summaries.final import final_notes
from tasks.summaries.key_points import distinct_points
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


SUMMARY = (
    "Alice: The remote control gets rubber buttons and a larger battery compartment. "
    "Bob: Marketing wants a fancy look for young customers."
)


def test_a_key_point_that_repeats_a_summary_sentence_is_dropped() -> None:
    points = [
        "Alice: The remote control gets rubber buttons and a larger battery compartment.",
        "Rubber buttons for the remote control, with a larger battery compartment.",
        "Young customers want a fancy look, marketing says.",
        "The budget is twelve euros fifty per unit.",
    ]
    assert distinct_points(points, SUMMARY, ["Alice", "Bob"]) == [
        "The budget is twelve euros fifty per unit."
    ]


def test_near_duplicate_key_points_keep_only_the_first() -> None:
    points = [
        "Carol: Speech recognition is too expensive for the first version.",
        "Speech recognition is too expensive for a first version, Carol thinks.",
        "The industrial designer proposed a curved case of soft plastic.",
        "Carol: A curved case of soft plastic was proposed by the designer.",
    ]
    assert distinct_points(points, SUMMARY, ["Carol"]) == [points[0], points[2]]


def test_distinct_key_points_are_all_kept_in_order() -> None:
    points = [
        "Alice: The budget is twelve euros fifty per unit.",
        "Speech recognition is too expensive for the first version.",
        "The project manager reports to management next week.",
        # shares a few words with the summary, but most of its words are new
        "Bob: Young testers preferred the curved case in yellow and grey.",
    ]
    assert distinct_points(points, SUMMARY, ["Alice", "Bob"]) == points


def test_final_notes_keep_names_to_speakers_and_key_points_that_add() -> None:
    notes = MeetingNotes(
        summary=SUMMARY,
        key_points=[
            "Bob: Marketing wants a fancy look for young customers.",
            "The budget is twelve euros fifty per unit.",
            "The budget is twelve euros and fifty cents per unit.",
        ],
        action_items=[],
        decisions=[],
        participants=["Alice", "Bob", "Mallory"],
    )
    final = final_notes(notes, speakers_of([_utterance("Alice"), _utterance("Bob")]))
    assert final.participants == ["Alice", "Bob"]
    assert final.key_points == ["The budget is twelve euros fifty per unit."]
