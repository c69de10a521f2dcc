"""Action items and decisions found from their language, deduplicated and capped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tasks.summaries.engines.extractive.text import (
    Sentence,
    content_terms,
    tidy_sentence,
    words_of,
    wordset,
)
from tasks.summaries.models import ActionItem

MAX_ACTION_ITEMS = 10
MAX_DECISIONS = 8


_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY_NUMBER = (
    r"(?:\d{1,2}(?:st|nd|rd|th)?|(?:twenty|thirty)?-?\s?(?:first|second|third|fourth|fifth|sixth"
    r"|seventh|eighth|ninth)|tenth|eleventh|twelfth|(?:thir|four|fif|six|seven|eigh|nine)teenth"
    r"|twentieth|thirtieth)"
)
_WHEN = (
    r"(?:(?:the\s+)?end\s+of\s+(?:the\s+|this\s+|next\s+)?(?:day|week|month|year|quarter|sprint)"
    r"|eod|eow|cob|tomorrow(?:\s+(?:morning|afternoon|evening))?"
    r"|(?:next|coming)\s+(?:week|month|year|quarter|sprint|meeting|time|weekend|" + _WEEKDAY + r")"
    r"|this\s+(?:week|month|quarter|sprint|weekend|" + _WEEKDAY + r")"
    r"|(?:next\s+)?" + _WEEKDAY + r"(?:\s+(?:morning|afternoon|evening))?"
    r"|"
    + _MONTH
    + r"\.?\s+"
    + _DAY_NUMBER
    + r"|(?:the\s+)?"
    + _DAY_NUMBER
    + r"\s+of\s+"
    + _MONTH
    + r"|\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}(?:/\d{2,4})?"
    r"|(?:the\s+)?(?:next|following)\s+meeting)"
)
_WHEN_WEAK = (
    r"(?:today|tonight|(?:this\s+)?(?:morning|afternoon|evening)|the\s+" + _DAY_NUMBER + ")"
)
_DUE = re.compile(
    r"(?<!every )\b(?:(?:(?:by|before|until|till|no\s+later\s+than|due|on|for)\s+)?"
    + _WHEN
    + r"|(?:by|before|until|till|no\s+later\s+than)\s+"
    + _WHEN_WEAK
    + r"|(?:in|within)\s+(?:a|one|two|three|four|a\s+couple\s+of|\d+)\s+(?:days?|weeks?|months?)"
    + r")\b",
    re.IGNORECASE,
)

_ADVERBS = wordset(
    "also just probably definitely then quickly actually maybe certainly still really "
    "personally happily gladly both all"
)
_NOT_ACTIONS = wordset(
    """be say tell show try think guess mean see go start stop let leave pass explain talk
    speak read repeat answer wait put give come continue move turn hand skip admit bet
    remember hope agree note use draw present describe introduce sit stand switch summarise
    summarize wrap take keep have need like love want bring stay ask imagine assume believe
    expect suggest just now do mind address pursue rub hear"""
)
_FIRST_PERSON = re.compile(
    r"\bI(?:'ll| will| shall|'m going to| am going to| need to| have to| can)\s+(.+)",
    re.IGNORECASE,
)
_EXPLICIT = re.compile(
    r"^(?:action(?:\s+item)?|todo|to-do|follow[- ]up)s?\s*[:\-]\s*(.+)", re.IGNORECASE
)
_ASSIGNED = re.compile(r"^(.+?)\s*,?\s+(?:is\s+|was\s+)?assigned\s+to\s+([A-Z][\w'-]+)")
_NAMED = re.compile(
    r"(?:^|[,;]\s*|\b(?:and|so|then)\s+)([A-Z][a-z][\w'-]*)\s+"
    r"(?:will|is going to|'s going to|needs to|has to|should|can)\s+(.+)"
)
_REQUEST = re.compile(
    r"(?:^|(?:^|[,;]\s*)([A-Z][a-z][\w'-]*)\s*,\s*)(?:can|could|would|will)\s+you"
    r"(?:\s+please)?\s+(.+?)\??$",
    re.IGNORECASE,
)
_VOCATIVE_PLEASE = re.compile(r"^([A-Z][a-z][\w'-]*)\s*,\s*please\s+(.+)")
_GROUP = re.compile(
    r"\b(?:we(?:'ll| will| need to| have to| should| must|'re going to| are going to)"
    r"|let's|someone (?:needs to|should|has to))\s+(.+)",
    re.IGNORECASE,
)
_ACCEPT = re.compile(
    r"^(?:yes|yeah|yep|sure|okay|ok|will do|no problem|of course|absolutely|i will|i'll|i can"
    r"|definitely|certainly)\b",
    re.IGNORECASE,
)
_NOT_NAMES = wordset(
    """I We You They He She It This That These Those There Here What Which Who Why How When
    Where The A An And But So Or If Then Also Now Well Yeah Yes No Okay Ok Right Maybe Everyone
    Everybody Somebody Someone Nobody Anyone Let Just Please Do Does Did Is Are Was Were Can
    Could Would Should Will Shall May Might Must Our My Your Their His Her Its Each All Both
    Some Any Most Many One Two Three Mr Mrs Ms Dr Chair Minister Government Members Member
    Committee Cabinet Canada Canadians Wales Britain Europe House Senate Parliament According
    Welcome Due Except Have Thank Thanks Given Regarding Because"""
) | frozenset(
    w.capitalize()
    for w in wordset(
        "monday tuesday wednesday thursday friday saturday sunday january february march april "
        "may june july august september october november december today tomorrow next last this"
    )
)
DECISION = re.compile(
    r"\b(?:we(?:'ve| have)?\s+(?:all\s+)?(?:decided|agreed|settled on|chose|opted)"
    r"|(?:it's|it is|that's|that is|it was|it has been)\s+(?:been\s+)?(?:decided|agreed|settled)"
    r"|(?:let's|let us|we'll|we will|we're going to|we are going to)\s+go\s+(?:with|for)"
    r"|(?:we're|we are)\s+going\s+with"
    r"|the\s+(?:final\s+)?decision\s+(?:is|was|has been)"
    r"|decision\s*:"
    r"|final\s+answer\s+is"
    r"|(?:we|everyone|everybody)\s+(?:all\s+)?agree(?:s|d)?\s+(?:on|that|to)"
    r"|(?:it's|it is)\s+a\s+deal|consensus\s+(?:is|was)|(?:is|was)\s+approved"
    r"|(?:we|the committee)\s+(?:will|shall)\s+(?:adopt|approve)"
    r"|agreed\s*(?::|that|to|on))",
    re.IGNORECASE,
)
AGENDA = re.compile(
    r"\b(?:agenda|(?:purpose|aim|goal|point|topic|subject)s?\s+of\s+(?:this|today's|the)\s+"
    r"(?:meeting|session)|(?:this|today's)\s+(?:meeting|session)\s+is\s+(?:about|to|on)"
    r"|we(?:'re| are)\s+(?:here|meeting)\s+(?:today\s+)?to|today\s+we(?:'re|\s+are|'ll|\s+will)"
    r"|(?:first|next|last)\s+item|item\s+\d+)",
    re.IGNORECASE,
)
_STRONG_DECISION = re.compile(r"decid|decision|agreed|settled|approved|final", re.IGNORECASE)


Item = TypeVar("Item", ActionItem, str)


@dataclass(frozen=True)
class _Found(Generic[Item]):
    """An action item or decision with how sure we are of it and where it was said."""

    priority: float
    position: int
    item: Item


def _clean_clause(text: str) -> str:
    """An action description: first clause, no due phrase, no trailing filler, capitalised."""
    text = re.split(
        r"\s+(?:because|but|although|since|so that|and then|which)\s+|[?!]"
        r"|,\s+(?:that's|which|so|because|since)\b",
        text,
    )[0]
    text = _DUE.sub("", text)
    text = re.sub(r"\b(?:as well|too|then|please|for us|for me|okay|ok|right)\s*[.,]*$", "", text)
    text = text.strip(" ,;:-.")
    words = text.split()
    if len(words) > 25:
        text = " ".join(words[:25])
    return text[:1].upper() + text[1:]


def _first_verb(clause: str) -> str:
    for word in words_of(clause):
        if word not in _ADVERBS:
            return word
    return ""


def _due_of(sentence: str) -> str | None:
    match = _DUE.search(sentence)
    return match.group(0).strip() if match else None


def _owner_for(name: str, participants: Sequence[str]) -> str:
    """Map a first name said in the meeting to the speaker label that contains it."""
    matches = [p for p in participants if name.lower() in words_of(p)]
    return matches[0] if len(matches) == 1 else name


def _action_in(
    sentence: Sentence, reply: Sentence | None, participants: Sequence[str]
) -> tuple[float, ActionItem] | None:
    """An action item said in `sentence` (with the next speaker's reply for requests)."""
    text = tidy_sentence(sentence.text)
    due = _due_of(text)

    def item(description: str, owner: str | None, priority: float) -> tuple[float, ActionItem]:
        when = _due_of(description) or due
        return priority + (1.0 if when else 0.0), ActionItem(
            description=_clean_clause(description), owner=owner, due=when
        )

    def acceptable(clause: str) -> bool:
        words = words_of(_clean_clause(clause))
        return len(words) >= 3 and len(content_terms(" ".join(words))) >= 1

    if match := _EXPLICIT.match(text):
        rest = match.group(1)
        named = re.match(r"([A-Z][\w'-]+)\s+(?:to|will|should)\s+(.+)", rest)
        if named and named.group(1) not in _NOT_NAMES:
            return item(named.group(2), _owner_for(named.group(1), participants), 4.0)
        if acceptable(rest):
            return item(rest, None, 4.0)
    if (
        (match := _ASSIGNED.match(text))
        and match.group(2) not in _NOT_NAMES
        and acceptable(match.group(1))
    ):
        return item(match.group(1), _owner_for(match.group(2), participants), 3.5)
    if (
        (match := _VOCATIVE_PLEASE.match(text))
        and match.group(1) not in _NOT_NAMES
        and _first_verb(match.group(2)) not in _NOT_ACTIONS
        and acceptable(match.group(2))
    ):
        return item(match.group(2), _owner_for(match.group(1), participants), 3.0)
    for match in _NAMED.finditer(text):
        name, rest = match.group(1), match.group(2)
        if name in _NOT_NAMES or _first_verb(rest) in _NOT_ACTIONS or not acceptable(rest):
            continue
        return item(rest, _owner_for(name, participants), 3.0)
    if match := _FIRST_PERSON.search(text):
        rest = match.group(1)
        verb = _first_verb(rest)
        weak = re.search(r"\bI(?: can|'m going to| am going to)\b", match.group(0), re.IGNORECASE)
        in_meeting = re.match(r"(?:now|first|right now|quickly)\b", rest, re.IGNORECASE)
        if verb not in _NOT_ACTIONS and not in_meeting and acceptable(rest) and (due or not weak):
            return item(rest, sentence.speaker, 2.0)
    if match := _REQUEST.search(text):
        name, rest = match.group(1), match.group(2)
        if _first_verb(rest) not in _NOT_ACTIONS and acceptable(rest):
            owner = None
            if name and name[0].isupper() and name not in _NOT_NAMES:
                owner = _owner_for(name, participants)
            elif reply is not None and _ACCEPT.match(reply.text):
                owner = reply.speaker
            if owner or due:
                return item(rest, owner, 2.5)
    if due and (match := _GROUP.search(text)):
        rest = match.group(1)
        if _first_verb(rest) not in _NOT_ACTIONS and acceptable(rest):
            return item(rest, None, 1.0)
    return None


def find_action_items(
    sentences: Sequence[Sentence], participants: Sequence[str] = ()
) -> list[ActionItem]:
    """Action items found from their language, strongest first-capped, in meeting order."""
    found: list[_Found[ActionItem]] = []
    for i, sentence in enumerate(sentences):
        if sentence.backchannel:
            continue
        reply = next((s for s in sentences[i + 1 : i + 4] if s.speaker != sentence.speaker), None)
        result = _action_in(sentence, reply, participants)
        if result is not None:
            found.append(_Found(result[0], sentence.position, result[1]))
    return _strongest(found, MAX_ACTION_ITEMS)


def find_decisions(sentences: Sequence[Sentence]) -> list[str]:
    """Decisions found from their language ("we decided", "let's go with", "agreed ...")."""
    found: list[_Found[str]] = []
    for sentence in sentences:
        text = sentence.text.strip()
        if (
            sentence.backchannel
            or text.endswith("?")
            or len(words_of(text)) < 6
            or len(content_terms(text)) < 2
            or not DECISION.search(text)
        ):
            continue
        if re.search(
            r"\b(?:if|whether|not|n't|haven't|never)\b.{0,30}(?:decid|agree)",
            sentence.text,
            re.IGNORECASE,
        ):
            continue
        text = tidy_sentence(sentence.text)
        found.append(_Found(_decision_strength(text), sentence.position, text))
    return _strongest(found, MAX_DECISIONS)


def _decision_strength(text: str) -> float:
    return 1.0 + (1.0 if _STRONG_DECISION.search(text) else 0.0)


def _item_key(item: ActionItem | str) -> set[str]:
    text = item.description if isinstance(item, ActionItem) else item
    return set(content_terms(text)) or set(words_of(text))


def _same(a: set[str], b: set[str]) -> bool:
    if not a or not b:
        return a == b
    overlap = len(a & b)
    return overlap / len(a | b) >= 0.6 or overlap / min(len(a), len(b)) >= 0.8


def _info(item: ActionItem | str) -> tuple[int, int]:
    if isinstance(item, ActionItem):
        return (item.owner is not None) + (item.due is not None), len(item.description)
    return 0, len(item)


def _strongest(found: Sequence[_Found[Item]], cap: int) -> list[Item]:
    """Merge near-duplicates (keeping the more informative), keep the `cap` strongest, and
    return them in meeting order."""
    kept: list[tuple[_Found[Item], set[str]]] = []
    for candidate in sorted(found, key=lambda f: f.position):
        key = _item_key(candidate.item)
        for j, (existing, existing_key) in enumerate(kept):
            if _same(key, existing_key):
                if (candidate.priority, _info(candidate.item)) > (
                    existing.priority,
                    _info(existing.item),
                ):
                    kept[j] = (
                        _Found(candidate.priority, existing.position, candidate.item),
                        key,
                    )
                break
        else:
            kept.append((candidate, key))
    best = sorted(kept, key=lambda pair: (-pair[0].priority, pair[0].position))[:cap]
    return [pair[0].item for pair in sorted(best, key=lambda pair: pair[0].position)]


def merge_action_items(items: Sequence[ActionItem]) -> list[ActionItem]:
    """Dedupe action items from several parts (keeping owner and due), capped, in order."""
    found = [
        _Found((item.owner is not None) + (item.due is not None), i, item)
        for i, item in enumerate(items)
    ]
    return _strongest(found, MAX_ACTION_ITEMS)


def merge_decisions(decisions: Sequence[str]) -> list[str]:
    """Dedupe decisions from several parts, strongest kept, in order."""
    found = [_Found(_decision_strength(d), i, d) for i, d in enumerate(decisions)]
    return _strongest(found, MAX_DECISIONS)
