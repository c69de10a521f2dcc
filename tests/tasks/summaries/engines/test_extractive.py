"""The offline engine: cleaning, back-channel removal, action items, decisions, map-reduce."""

from __future__ import annotations

import re

import pytest

from tasks.chunking import chunk_utterances
from tasks.summaries import MeetingNotes, Summarizer
from tasks.summaries.engines.extractive.engine import (
    ENGINE,
    ExtractiveSummarizer,
    summarize_utterances,
)
from tasks.summaries.engines.extractive.items import find_action_items, find_decisions
from tasks.summaries.engines.extractive.ranking import (
    DEFAULT_PARAMS,
    concepts_of,
    rank_by_coverage,
    target_words_for,
)
from tasks.summaries.engines.extractive.text import (
    clean_text,
    is_backchannel,
    meeting_sentences,
    participants_of,
    split_sentences,
    words_of,
)
from tasks.summaries.key_points import distinct_points
from tasks.summaries.reduce import plan_reduce_groups
from tasks.transcripts import Utterance


def _meeting(turns: list[tuple[str | None, str]]) -> list[Utterance]:
    return [
        Utterance(index=i, speaker=s, text=t, start=None, end=None)
        for i, (s, t) in enumerate(turns)
    ]


LAUNCH_MEETING = _meeting(
    [
        ("Alice", "Okay, um, let's get started. {vocalsound} Today we plan the mobile app launch."),
        ("Bob", "Yeah ."),
        ("Carol", "Mm-hmm ."),
        (
            "Carol",
            "So I I think the the beta feedback was mostly positive, you know, but uh the "
            "login flow confuses new users.",
        ),
        ("Alice", "Right ."),
        ("Bob", "We decided to postpone the Android release until the payment bug is fixed."),
        ("Alice", "Okay, so let's go with the March launch for the iOS app then."),
        ("Carol", "I'll send the beta survey results to everyone by Friday."),
        ("Alice", "Bob, can you update the release checklist before March 3?"),
        ("Bob", "Sure, I'll do that."),
        ("Alice", "Dave will review the marketing copy next week."),
        ("Carol", "Action: Bob to fix the payment bug by the end of the month."),
        ("Alice", "The decision is that we keep the free tier for students."),
        ("Bob", "Uh, we need to book the launch venue by Thursday."),
        ("Unknown", "Sorry, is this the room for the design review?"),
        (None, "[inaudible]"),
    ]
)


def test_clean_text_removes_markers_fillers_and_stutters() -> None:
    text = "Um I I think {vocalsound} we should , you know , go with the the {gap} L_C_D_ screen ."
    assert clean_text(text) == "I think we should go with the LCD screen."
    assert clean_text("Uh , I mean , it 's fine . {disfmarker}") == "It's fine."
    assert clean_text("[laughter] so we we 're done {pause} .") == "So we're done."
    assert clean_text("I think I think that's right") == "I think that's right"


def test_clean_text_repairs_false_starts_and_fragments() -> None:
    restart = (
        "it's in the design phase that we {disfmarker} it's in the design phase that we plan it"
    )
    assert clean_text(restart) == "It's in the design phase that we plan it"
    assert clean_text("S so th w we're talking about the budget") == (
        "So we're talking about the budget"
    )


@pytest.mark.parametrize(
    "turn", ["Yeah .", "Mm-hmm .", "Okay .", "Right .", "Okay, right.", "Uh-huh", "Yeah , great ."]
)
def test_backchannel_turns_are_recognised(turn: str) -> None:
    assert is_backchannel(clean_text(turn)) or not clean_text(turn)


def test_content_turns_are_not_backchannel() -> None:
    assert not is_backchannel("Yeah, the budget is too tight.")
    assert not is_backchannel("I didn't receive the agenda yet.")


def test_backchannel_turns_never_reach_the_sentences() -> None:
    texts = [s.text for s in meeting_sentences(LAUNCH_MEETING)]
    assert "Yeah." not in texts
    assert not any(t.startswith(("Mm", "Right")) for t in texts)
    assert all("{" not in t and "[" not in t for t in texts)


def test_split_sentences_keeps_titles_and_cuts_run_ons() -> None:
    assert split_sentences("Thank you, Mr. Chair. The budget is late.") == [
        "Thank you, Mr. Chair.",
        "The budget is late.",
    ]
    run_on = ", ".join(["we looked at the numbers again"] * 20)
    assert all(len(s.split()) <= 45 for s in split_sentences(run_on))


def test_action_items_have_owner_and_due() -> None:
    sentences = meeting_sentences(LAUNCH_MEETING, keep_backchannel=True)
    items = {i.description: i for i in find_action_items(sentences, ["Alice", "Bob", "Carol"])}
    send = items["Send the beta survey results to everyone"]
    assert (send.owner, send.due) == ("Carol", "by Friday")
    checklist = items["Update the release checklist"]
    assert (checklist.owner, checklist.due) == ("Bob", "before March 3")
    review = items["Review the marketing copy"]
    assert (review.owner, review.due) == ("Dave", "next week")
    fix = items["Fix the payment bug"]
    assert (fix.owner, fix.due) == ("Bob", "by the end of the month")
    venue = items["Book the launch venue"]
    assert (venue.owner, venue.due) == (None, "by Thursday")
    assert len(items) == 5, sorted(items)


def test_a_request_is_owned_by_whoever_accepts_it() -> None:
    meeting = _meeting(
        [
            ("Alice", "Could you draft the press release for the launch?"),
            ("Bob", "Sure, no problem."),
        ]
    )
    (item,) = find_action_items(meeting_sentences(meeting, keep_backchannel=True), ["Alice", "Bob"])
    assert (item.description, item.owner, item.due) == (
        "Draft the press release for the launch",
        "Bob",
        None,
    )


def test_in_meeting_talk_is_not_an_action_item() -> None:
    meeting = _meeting(
        [
            ("Alice", "I'll show you the slides now."),
            ("Bob", "I'll just say one thing about the budget."),
            ("Carol", "Can you hear me?"),
            ("Bob", "Sure, I'll do that."),
        ]
    )
    sentences = meeting_sentences(meeting, keep_backchannel=True)
    assert find_action_items(sentences, ["Alice", "Bob", "Carol"]) == []


def test_decisions_are_found_from_their_language() -> None:
    decisions = find_decisions(meeting_sentences(LAUNCH_MEETING))
    assert decisions == [
        "We decided to postpone the Android release until the payment bug is fixed.",
        "Let's go with the March launch for the iOS app then.",
        "The decision is that we keep the free tier for students.",
    ]
    questions = _meeting([("Alice", "Have we decided which vendor we go with for the launch?")])
    assert find_decisions(meeting_sentences(questions)) == []


def test_participants_are_ordered_by_words_spoken_without_placeholders() -> None:
    assert participants_of(LAUNCH_MEETING) == ["Alice", "Carol", "Bob"]


def test_summarize_utterances_fills_every_field() -> None:
    notes = summarize_utterances(LAUNCH_MEETING, target_words=40)
    assert notes.summary and notes.key_points
    assert len(notes.summary.split()) <= 60
    assert notes.participants == ["Alice", "Carol", "Bob"]
    assert len(notes.action_items) == 5
    assert len(notes.decisions) == 3


def test_target_length_grows_with_the_meeting_within_bounds() -> None:
    assert target_words_for(300) == 100
    assert target_words_for(5_000) == 120
    assert 120 < target_words_for(15_000) < 250
    assert target_words_for(1_000_000) == 250


TOPICS = [
    "the remote control needs a larger battery compartment and rubber buttons",
    "marketing research shows young customers want a fancy look and feel",
    "the budget allows twelve euros fifty per unit including the case",
    "speech recognition is too expensive for the first version of the product",
    "the industrial designer proposed a curved case made of soft plastic",
    "the project manager will report the decisions to management next week",
]


def _long_meeting(turns: int = 240) -> list[Utterance]:
    # Per ten turns: the project manager speaks four, marketing three, and so on.
    speakers = ["Project Manager"] * 4 + ["Marketing"] * 3 + ["Industrial Designer"] * 2
    speakers.append("User Interface")
    rows: list[tuple[str | None, str]] = []
    for i in range(turns):
        topic = TOPICS[(i // 8) % len(TOPICS)]
        speaker = speakers[(i * 3) % 10]
        if i % 7 == 6:
            rows.append(("Marketing", "Mm-hmm ."))
        else:
            rows.append((speaker, f"Um so in point {i} I think {topic} , and we talked it over ."))
    return _meeting(rows)


def _pipeline(summarizer: Summarizer, utterances: list[Utterance]) -> MeetingNotes:
    chunks = chunk_utterances(utterances, 300, 30)
    parts = [
        summarizer.summarize_chunk(c, title="t", chunk_count=len(chunks)).notes for c in chunks
    ]
    while len(groups := plan_reduce_groups(parts, 900)) > 1:
        parts = [
            summarizer.combine([parts[i] for i in g], title="t", final=False).notes for g in groups
        ]
    return summarizer.combine(parts, title="t", final=True).notes


def test_chunk_and_combine_path_is_deterministic_and_extractive() -> None:
    summarizer = ExtractiveSummarizer()
    assert summarizer.engine == ENGINE == "offline-extractive"
    utterances = _long_meeting()
    assert len(chunk_utterances(utterances, 300, 30)) > 6
    first = _pipeline(summarizer, utterances)
    second = _pipeline(ExtractiveSummarizer(), utterances)
    assert first == second
    assert first.summary.strip()
    # the summary already names all six topics: no key point could add to it
    assert first.key_points == []
    assert first.participants == [
        "Project Manager",
        "Marketing",
        "Industrial Designer",
        "User Interface",
    ]
    transcript = " ".join(words_of(" ".join(clean_text(u.text) for u in utterances)))
    speaker_prefix = re.compile(
        r"(?:Project Manager|Marketing|Industrial Designer|User Interface):"
    )
    for sentence in split_sentences(speaker_prefix.sub("", first.summary), 10_000):
        assert " ".join(words_of(sentence)) in transcript, sentence
    for point in first.key_points:
        assert " ".join(words_of(speaker_prefix.sub("", point))) in transcript, point


def test_coverage_ranking_skips_what_is_said_and_takes_one_per_group() -> None:
    texts = [
        "red apples grow in the north",
        "red apples grow in the south",
        "blue pears ripen early",
        "blue pears ripen late",
    ]
    assert sorted(rank_by_coverage(texts)) == [0, 2]
    assert rank_by_coverage(texts, covered=concepts_of(texts[0])) in ([2], [3])
    picked = rank_by_coverage([*texts, "red apples and blue pears"], groups=[0, 0, 0, 0, 0])
    assert len(picked) == 1


MANY_TOPICS = [
    *TOPICS,
    "the company logo and colours must be visible on the front cover",
    "teletext is outdated because most people browse news on the internet",
    "a scroll wheel would replace the channel buttons on the side",
    "the factory in Asia can deliver titanium parts within six weeks",
    "customer surveys rank finding a lost remote as the biggest annoyance",
    "solar cells could charge the battery when the remote lies near a window",
    "the lcd screen doubles the price of every single unit",
    "an evaluation workshop with twenty users is planned for the spring",
]


def test_key_points_add_to_the_summary_each_on_its_own_topic() -> None:
    rows: list[tuple[str | None, str]] = []
    speakers = ["Project Manager", "Marketing", "Industrial Designer", "User Interface"]
    for i in range(420):
        topic = MANY_TOPICS[(i // 10) % len(MANY_TOPICS)]
        rows.append((speakers[i % 4], f"So in turn {i} I think {topic} , we agree ."))
    final = summarize_utterances(_meeting(rows), target_words=60)
    points = final.key_points
    assert 2 <= len(points) <= DEFAULT_PARAMS.max_key_points
    assert distinct_points(points, final.summary, final.participants) == points
    bare = [re.sub(r"^[^:]+:\s+", "", p) for p in points]
    assert all(len(p.split()) <= DEFAULT_PARAMS.key_point_max_words for p in bare)
    turns = [int(re.search(r"turn (\d+)", p).group(1)) for p in bare]  # type: ignore[union-attr]
    assert turns == sorted(turns)
    topics = {MANY_TOPICS[(t // 10) % len(MANY_TOPICS)] for t in turns}
    assert len(topics) == len(turns)
    assert not any(topic in final.summary for topic in topics)


def test_combine_dedupes_items_and_merges_participants() -> None:
    summarizer = ExtractiveSummarizer()
    chunks = chunk_utterances(LAUNCH_MEETING, 60, 10)
    assert len(chunks) > 2
    parts = [summarizer.summarize_chunk(c, title="t", chunk_count=len(chunks)) for c in chunks]
    assert all(p.attempts == 1 and p.usage.calls == 0 for p in parts)
    doubled = [p.notes for p in parts] * 2
    final = summarizer.combine(doubled, title="t", final=True).notes
    assert len(final.action_items) == 5
    assert len(final.decisions) == 3
    assert sorted(final.participants) == ["Alice", "Bob", "Carol"]
    assert len(final.key_points) == len(set(final.key_points))
