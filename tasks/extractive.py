"""The offline engine: extractive meeting summaries, action items and decisions, no model at all.

It never pretends to be an LLM. It cleans ASR and disfluency noise (markers, fillers, stutters,
false starts), drops back-channel turns, splits turns into sentences and selects them by greedy
concept coverage (Gillick & Favre's ICSI summariser, made greedy): a concept is a content word or
a word pair, weighted by how many sentences mention it; each pick maximises the weight of the
concepts it newly covers per sqrt(word), so redundancy is removed by construction. The picks are
printed in meeting order, attributed to their speakers. Action items and decisions are found from
their language; participants are the speakers, ordered by how much they said.

Map-reduce: a chunk's notes carry its selected sentences in `summary` (`summary_ratio` of its
words) and a larger pool of candidates in `key_points`; `combine` re-ranks the union of the
candidates globally, so the partial notes are all it needs. How many words the parts selected
tells the final pass how long the meeting was, which sets the final summary's target length.
The knobs and what was measured to set them: benchmarks/summary_quality.py and its README.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tasks.chunking import Chunk
from tasks.llm import Usage
from tasks.summaries import ActionItem, MeetingNotes, NotesResult
from tasks.transcripts import Utterance

ENGINE = "offline-extractive"
MODEL = "extractive-v1"
VERSION = "extractive-2"


@dataclass(frozen=True)
class ExtractiveParams:
    """Tunable knobs (defaults measured on QMSum validation, see benchmarks/summary_quality.py)."""

    summary_ratio: float = 0.05
    """Words of chunk summary per word of chunk: partial summaries carry coverage to the end."""
    candidate_factor: float = 3.0
    """Candidate sentences kept per chunk, as a multiple of its summary sentences."""
    target_scale: float = 1.5
    """Final summary words = target_scale * sqrt(meeting words), clamped to the bounds below."""
    min_target_words: int = 120
    max_target_words: int = 250
    min_candidates: int = 8
    """Candidate sentences a chunk keeps at least (short chunks still feed the final pass)."""
    min_sentence_words: int = 6
    length_exponent: float = 0.5
    """A sentence's coverage gain is divided by (its words ** length_exponent)."""
    min_concept_df: int = 2
    """A concept counts once this many sentences mention it (drops one-off noise)."""
    summary_bonus: float = 0.2
    """Extra gain in `combine` for a candidate that a part selected for its own summary."""
    cue_bonus: float = 1.0
    """Extra gain for sentences that state the agenda or a decision (their words say so)."""
    attribute_summary: bool = True
    """Prefix summary sentences with their speaker ("Alice: ...")."""


DEFAULT_PARAMS = ExtractiveParams()


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


MAX_KEY_POINTS = 8
MAX_ACTION_ITEMS = 10
MAX_DECISIONS = 8


_DISFMARKER = re.compile(r"\s*\{disfmarker\}\s*", re.IGNORECASE)
_MARKERS = re.compile(
    r"\{[^{}]{0,40}\}|\[[^\[\]]{0,40}\]|<[^<>]{0,30}>"
    r"|\((?:laugh\w*|inaudible|crosstalk|applause|cough\w*|noise|silence|pause|music"
    r"|unintelligible|indistinct)\)",
    re.IGNORECASE,
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:%)])")
_SPACE_AFTER_OPEN = re.compile(r"([(])\s+")
_CONTRACTION = re.compile(r"(?<=\w)\s+('(?:s|re|ve|ll|d|m|t)\b|n't\b)", re.IGNORECASE)
_FILLER = re.compile(
    r"(?<![\w'-])(?:u+m+|u+h+m*|e+r+m+|e+r+|h+m+|m+h*m+|a+h+|e+h+|"
    r"m+-?h+m+|u+h-?h?u+h+|u+m-?h+u+m+|h+m+-?m+)(?![\w'-])\s*,?",
    re.IGNORECASE,
)
_PHRASE_FILLER_START = re.compile(r"(^|[.!?;]\s*)(?:you know|I mean|you see)\s*,\s*", re.IGNORECASE)
_PHRASE_FILLER_MID = re.compile(r"\s*,\s*(?:you know|I mean|you see)\s*(?:,|(?=[.!?]|$))")
_REPEAT_BIGRAM = re.compile(r"\b([\w']+\s+[\w']+)(?:[\s,]+\1\b)+", re.IGNORECASE)
_REPEAT_WORD = re.compile(r"\b([\w']+)(?:[\s,]+\1\b)+", re.IGNORECASE)
_HYPHEN_FRAGMENT = re.compile(r"(?<![\w'-])[a-z]{1,4}-(?=\s)", re.IGNORECASE)
_PUNCT_RUNS = re.compile(r"([,;:])(?:\s*[,;:])+")
_COMMA_BEFORE_END = re.compile(r"[,;:]\s*([.!?])")
_END_RUNS = re.compile(r"([.!?])(?:\s*[.!?])+")
_LEADING_PUNCT = re.compile(r"^[\s,.;:!?-]+")
_SPACES = re.compile(r"\s+")

_SHORT_WORDS = _wordset(
    "a i an as at be by do go he if in is it me my no of on or so to up us we am oh ok ah "
    "all and any are but can did for get got had has her him his how its let may not now one "
    "our out own put saw say see she the too two use was way who why yes yet you new big few "
    "old far off ask lot bit try set run end day per via ten six war tax pay job law age"
)


def _repair_disfluency(text: str) -> str:
    """Drop the false start before a `{disfmarker}` when the speaker restarts with its words."""
    pieces = _DISFMARKER.split(text)
    out = pieces[0]
    for after in pieces[1:]:
        before_words = out.split()
        after_words = after.split()
        cut = None
        if after_words and any(ch.isalnum() for ch in after_words[0]):
            first = after_words[0].lower()
            for j in range(len(before_words) - 1, max(-1, len(before_words) - 13), -1):
                word = before_words[j]
                if word in {".", "?", "!"} or (j < len(before_words) - 1 and word[-1] in ".?!"):
                    break
                if word.lower() == first:
                    cut = j
                    break
        kept = before_words if cut is None else before_words[:cut]
        out = " ".join([*kept, *after_words])
    return out


_TWO_LETTER_WORDS = _wordset(
    "a i x y z n e k v p am an as at be by do go he hi if in is it me my no of oh ok on or so "
    "to up us we ah ha ya ye yo ex re vs pm km cm kg tv pc id uk eu un ai ui ux db ip hr qa ml "
    "gb mb kb tb mp vp ad ed ms mr dr st"
)
_SPELLED_ACRONYM = re.compile(r"\b(?:[A-Za-z]_){2,}")


def _drop_fragments(text: str) -> str:
    """Drop cut-off word starts: "S so", "wh where", and lone "th", "w" that are no words."""
    words = text.split(" ")
    kept: list[str] = []
    for i, word in enumerate(words):
        bare = word.rstrip(",;:")
        if bare.isalpha() and bare.islower() and len(bare) <= 2 and bare not in _TWO_LETTER_WORDS:
            continue
        if (
            i + 1 < len(words)
            and 1 <= len(word) <= 3
            and word.isalpha()
            and word.lower() not in _SHORT_WORDS
            and len(words[i + 1]) > len(word)
            and words[i + 1].lower().startswith(word.lower())
        ):
            continue
        kept.append(word)
    return " ".join(kept)


def clean_text(text: str) -> str:
    """Remove ASR markers, fillers, stutters and false starts; tidy spacing and punctuation."""
    text = _repair_disfluency(text)
    text = _MARKERS.sub(" ", text)
    text = _SPELLED_ACRONYM.sub(lambda m: m.group(0).replace("_", ""), text)
    text = _SPACES.sub(" ", text).strip()
    text = _CONTRACTION.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _FILLER.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text))
    text = _LEADING_PUNCT.sub("", text)
    text = _PHRASE_FILLER_START.sub(r"\1", text)
    text = _PHRASE_FILLER_MID.sub("", text)
    text = _HYPHEN_FRAGMENT.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    text = _drop_fragments(text)
    text = _REPEAT_BIGRAM.sub(r"\1", text)
    text = _REPEAT_WORD.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text))
    text = _PUNCT_RUNS.sub(r"\1", text)
    text = _COMMA_BEFORE_END.sub(r"\1", text)
    text = _END_RUNS.sub(r"\1", text)
    text = _LEADING_PUNCT.sub("", text).strip()
    return text[:1].upper() + text[1:]


_STOPWORDS = _wordset(
    """a about above after again against all almost also although am an and another any anybody
    anyone anything anyway anywhere are aren't around as at away back be became because become
    been before being below between both but by can can't cannot could couldn't did didn't do
    does doesn't doing don't done down during each either else enough etc even ever every
    everybody everyone everything few for from further had hadn't has hasn't have haven't having
    he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll
    i'm i've if in into is isn't it it'd it'll it's its itself just least less let let's many
    may me might mine more most much must mustn't my myself neither never no nobody none nor not
    nothing now of off often on once one ones only onto or other others otherwise ought our ours
    ourselves out over own per quite rather same several shall shan't she she'd she'll she's
    should shouldn't since so some somebody someone something sometimes somewhat such than that
    that'll that's the their theirs them themselves then there there'll there's these they
    they'd they'll they're they've this those though through thus till to too toward towards
    under until up upon us very via was wasn't we we'd we'll we're we've were weren't what
    what's whatever when whenever where where's whereas wherever whether which while who who's
    whoever whole whom whose why why's will with within without won't would wouldn't yet you
    you'd you'll you're you've your yours yourself yourselves"""
)
_CONVERSATIONAL = _wordset(
    """yeah yes yep yup no nope okay ok right alright cool sure great good fine fair true exactly
    really well oh ah wow hmm huh uh um mm thanks thank please sorry hello hi bye actually
    basically probably maybe perhaps definitely certainly totally absolutely obviously anyway
    like just kind sort stuff thing things lot lots bit bunch gonna gotta wanna think thought
    know knew mean guess suppose say said says saying tell told see seen look looking looks
    get gets getting got go goes going went come comes coming came want wanted wants
    make makes made put take took let's yeah hmm mhm uh-huh mm-hmm ooh whatever somewhere
    something someone anyway pretty quite little big"""
)
_BACKCHANNEL = _wordset(
    """yeah yes yep yup no nope okay ok right alright cool sure great good fine fair true exactly
    really well oh ah wow hmm huh mhm uh-huh mm-hmm thanks thank you so and but or
    indeed totally absolutely agreed correct nice interesting lovely perfect brilliant"""
)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _stem(word: str) -> str:
    """A light suffix stripper so that "designs", "designed" and "design" meet."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words_of(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _WORD.findall(text.lower())


def content_terms(text: str) -> list[str]:
    """Stemmed words that carry meaning (no stopwords, conversational words or lone digits)."""
    return [
        _stem(w)
        for w in words_of(text)
        if w not in _STOPWORDS and w not in _CONVERSATIONAL and len(w) > 1 and not w.isdigit()
    ]


def is_backchannel(text: str) -> bool:
    """True for turns that only acknowledge ("Yeah.", "Mm-hmm.", "Okay, right.")."""
    tokens = words_of(text)
    content = [t for t in tokens if t not in _STOPWORDS and t not in _BACKCHANNEL]
    return not content or (len(content) < 2 and len(tokens) <= 4)


_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = _wordset(
    "mr mrs ms dr prof hon st vs etc e.g i.e no approx dept sen rep gov gen col lt sgt jr sr"
)
_DISCOURSE_START = re.compile(
    r"^(?:(?:so|and|but|okay|ok|well|yeah|yes|right|alright|now|oh|anyway|then|also|because"
    r"|thank you(?: very much)?|thanks|(?:mr\.?|madam|madame)\s*(?:chair|speaker|president))"
    r"\b[\s,.]*)+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Sentence:
    """One cleaned sentence of the meeting, with who said it and where."""

    text: str
    speaker: str | None
    position: int
    backchannel: bool = False
    """Part of a turn that only acknowledges: never summarised, but it can accept a request."""


def split_sentences(text: str, max_words: int = 45) -> list[str]:
    """Split cleaned text at sentence ends (not after titles); cut run-ons at commas."""
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        head = text[start : match.start()]
        last = head.rsplit(" ", 1)[-1].rstrip(".").lower()
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha() and last != "i"):
            continue
        pieces.append(head)
        start = match.end()
    pieces.append(text[start:])
    sentences: list[str] = []
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if len(piece.split()) <= max_words:
            sentences.append(piece)
            continue
        current: list[str] = []
        for clause in re.split(r"(?<=[,;])\s+", piece):
            words = clause.split()
            if current and len(current) + len(words) > max_words:
                sentences.append(" ".join(current))
                current = []
            current.extend(words)
            while len(current) > max_words * 2:
                sentences.append(" ".join(current[:max_words]))
                current = current[max_words:]
        if current:
            sentences.append(" ".join(current))
    return sentences


def tidy_sentence(text: str) -> str:
    """A sentence fit to show: no leading "So, okay,", capitalised, ends with punctuation."""
    stripped = _DISCOURSE_START.sub("", text).strip(" ,;:-")
    if len(stripped.split()) >= 3:
        text = stripped
    text = text.rstrip(" ,;:-")
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


_PLACEHOLDER_SPEAKERS = frozenset({"", "unknown", "none", "null", "n/a", "speaker", "?"})


def is_real_speaker(speaker: str | None) -> bool:
    """False for missing or placeholder speaker labels ("Unknown", "")."""
    return speaker is not None and speaker.strip().lower() not in _PLACEHOLDER_SPEAKERS


def speaker_name(speaker: str | None) -> str | None:
    """The speaker label without a trailing "(riding, party)" note; None for placeholders."""
    if speaker is None or not is_real_speaker(speaker):
        return None
    label = speaker.strip()
    if label.endswith(")") and " (" in label:
        label = label.split(" (", 1)[0].strip()
    return label or speaker.strip()


def meeting_sentences(
    utterances: Iterable[Utterance], *, keep_backchannel: bool = False
) -> list[Sentence]:
    """Cleaned sentences in meeting order; back-channel turns are dropped unless kept (flagged)."""
    sentences: list[Sentence] = []
    for utterance in utterances:
        text = clean_text(utterance.text)
        backchannel = is_backchannel(text)
        if not text or (backchannel and not keep_backchannel):
            continue
        speaker = speaker_name(utterance.speaker)
        for piece in split_sentences(text):
            if words_of(piece):
                sentences.append(Sentence(piece, speaker, len(sentences), backchannel))
    return sentences


def participants_of(utterances: Iterable[Utterance]) -> list[str]:
    """Speakers ordered by how many words they said (ties by first appearance)."""
    spoken: Counter[str] = Counter()
    for utterance in utterances:
        name = speaker_name(utterance.speaker)
        if name is not None:
            spoken[name] += len(utterance.text.split())
    return [name for name, _ in spoken.most_common()]


def concepts_of(text: str) -> set[str]:
    """The concepts a sentence covers: its content words and its word pairs that are not two
    function words ("remote control", "the budget"), stemmed."""
    raw = words_of(text)
    stems = [_stem(w) for w in raw]
    plain = [w in _STOPWORDS or w in _CONVERSATIONAL or len(w) < 2 for w in raw]
    concepts = {s for s, p, w in zip(stems, plain, raw, strict=True) if not p and not w.isdigit()}
    for i in range(len(raw) - 1):
        if not (plain[i] and plain[i + 1]):
            concepts.add(f"{stems[i]} {stems[i + 1]}")
    return concepts


def rank_by_coverage(
    texts: Sequence[str],
    *,
    eligible: Sequence[bool] | None = None,
    target_words: int | None = None,
    max_count: int | None = None,
    boost: Sequence[float] | None = None,
    params: ExtractiveParams = DEFAULT_PARAMS,
) -> list[int]:
    """Greedy concept coverage: repeatedly pick the sentence whose not-yet-covered concepts
    weigh most per sqrt(word) (a concept weighs the number of sentences that mention it).

    Stops at about `target_words` (skipping sentences that would overshoot) or `max_count`;
    returns indices in the order picked, best first. Covered concepts earn nothing again, so
    redundancy is removed by construction. Lazy evaluation keeps it fast (gains only shrink).
    """
    concepts = [concepts_of(t) for t in texts]
    df = Counter(c for row in concepts for c in row)
    weight = {c: float(n) for c, n in df.items() if n >= params.min_concept_df}
    lengths = [max(len(t.split()), 1) for t in texts]
    norm = [length**params.length_exponent for length in lengths]
    if boost is not None:
        norm = [n / (1.0 + b) for n, b in zip(norm, boost, strict=True)]
    covered: set[str] = set()

    def gain(i: int) -> float:
        return sum(weight.get(c, 0.0) for c in concepts[i] - covered) / norm[i]

    heap = [(-gain(i), i) for i in range(len(texts)) if eligible is None or eligible[i]]
    heapq.heapify(heap)
    chosen: list[int] = []
    total = 0
    budget = target_words if target_words is not None else sum(lengths)
    slack = max(8, budget // 10)
    while heap and total < budget and (max_count is None or len(chosen) < max_count):
        _, i = heapq.heappop(heap)
        current = gain(i)
        if heap and current < -heap[0][0]:
            heapq.heappush(heap, (-current, i))
            continue
        if current <= 0:
            break
        if chosen and total + lengths[i] > budget + slack:
            continue
        chosen.append(i)
        total += lengths[i]
        covered |= concepts[i]
    return chosen


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

_ADVERBS = _wordset(
    "also just probably definitely then quickly actually maybe certainly still really "
    "personally happily gladly both all"
)
_NOT_ACTIONS = _wordset(
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
_NOT_NAMES = _wordset(
    """I We You They He She It This That These Those There Here What Which Who Why How When
    Where The A An And But So Or If Then Also Now Well Yeah Yes No Okay Ok Right Maybe Everyone
    Everybody Somebody Someone Nobody Anyone Let Just Please Do Does Did Is Are Was Were Can
    Could Would Should Will Shall May Might Must Our My Your Their His Her Its Each All Both
    Some Any Most Many One Two Three Mr Mrs Ms Dr Chair Minister Government Members Member
    Committee Cabinet Canada Canadians Wales Britain Europe House Senate Parliament According
    Welcome Due Except Have Thank Thanks Given Regarding Because"""
) | frozenset(
    w.capitalize()
    for w in _wordset(
        "monday tuesday wednesday thursday friday saturday sunday january february march april "
        "may june july august september october november december today tomorrow next last this"
    )
)
_DECISION = re.compile(
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
_AGENDA = re.compile(
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
            or not _DECISION.search(text)
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


def target_words_for(meeting_words: int, params: ExtractiveParams = DEFAULT_PARAMS) -> int:
    """Length of a whole-meeting summary: grows with the square root of the meeting's length."""
    target = round(params.target_scale * math.sqrt(max(meeting_words, 0)))
    target = min(params.max_target_words, max(params.min_target_words, target))
    return int(max(1, min(target, meeting_words // 3)))


def _attributed(sentence: Sentence) -> str:
    text = tidy_sentence(sentence.text)
    return f"{sentence.speaker}: {text}" if sentence.speaker else text


def _summary_text(sentences: Sequence[Sentence], params: ExtractiveParams) -> str:
    if not params.attribute_summary:
        return " ".join(tidy_sentence(s.text) for s in sentences)
    lines: list[str] = []
    previous: str | None = None
    for sentence in sentences:
        text = tidy_sentence(sentence.text)
        if sentence.speaker and sentence.speaker != previous:
            lines.append(f"{sentence.speaker}: {text}")
        elif lines:
            lines[-1] += " " + text
        else:
            lines.append(text)
        previous = sentence.speaker
    return " ".join(lines)


@dataclass
class _Selection:
    summary: list[Sentence]
    pool: list[Sentence]
    key_points: list[Sentence]


def _select(
    sentences: Sequence[Sentence],
    summary_words: int,
    pool_size: int,
    params: ExtractiveParams,
    boost: Sequence[float] | None = None,
) -> _Selection:
    """Summary sentences (about `summary_words`), a candidate pool and the key points."""
    texts = [s.text for s in sentences]
    counts = [len(t.split()) for t in texts]
    if params.cue_bonus:
        cues = [
            params.cue_bonus if _AGENDA.search(t) or _DECISION.search(t) else 0.0 for t in texts
        ]
        boost = [a + b for a, b in zip(boost or [0.0] * len(texts), cues, strict=True)]
    eligible = [
        params.min_sentence_words <= c and len(content_terms(t)) >= 2
        for c, t in zip(counts, texts, strict=True)
    ]
    if not any(eligible):
        eligible = [c > 0 for c in counts]
    chosen = rank_by_coverage(
        texts, eligible=eligible, target_words=summary_words, boost=boost, params=params
    )
    if not chosen and any(eligible):
        chosen = [eligible.index(True)]
    pool: list[int] = []
    if pool_size > len(chosen):
        pool = rank_by_coverage(
            texts, eligible=eligible, max_count=pool_size, boost=boost, params=params
        )
    key = rank_by_coverage(
        texts,
        eligible=[e and c <= 40 for e, c in zip(eligible, counts, strict=True)],
        max_count=MAX_KEY_POINTS,
        boost=boost,
        params=params,
    )
    return _Selection(
        summary=[sentences[i] for i in sorted(chosen)],
        pool=[sentences[i] for i in sorted(set(pool) | set(chosen))],
        key_points=[sentences[i] for i in sorted(key)],
    )


def summarize_utterances(
    utterances: Sequence[Utterance],
    *,
    target_words: int | None = None,
    params: ExtractiveParams = DEFAULT_PARAMS,
) -> MeetingNotes:
    """Notes for a whole transcript in one pass (no chunking)."""
    every = meeting_sentences(utterances, keep_backchannel=True)
    sentences = [s for s in every if not s.backchannel]
    participants = participants_of(utterances)
    meeting_words = sum(len(u.text.split()) for u in utterances)
    target = target_words or target_words_for(meeting_words, params)
    selection = _select(sentences, target, 0, params)
    return MeetingNotes(
        summary=_summary_text(selection.summary, params) or "(nothing was said)",
        key_points=[_attributed(s) for s in selection.key_points],
        action_items=find_action_items(every, participants),
        decisions=find_decisions(sentences),
        participants=participants,
    )


_ATTRIBUTION = re.compile(r"^([^:]{1,80}):\s+(.+)$", re.DOTALL)


class ExtractiveSummarizer:
    """The offline `Summarizer`: extractive map-reduce over chunks, no model calls."""

    engine = ENGINE
    model = MODEL
    version = VERSION

    def __init__(self, params: ExtractiveParams = DEFAULT_PARAMS) -> None:
        self.params = params

    def summarize_chunk(self, chunk: Chunk, *, title: str, chunk_count: int) -> NotesResult:
        """Notes for one chunk: a proportional summary plus a pool of candidate sentences."""
        params = self.params
        own = chunk.utterances[chunk.overlap_utterances :] or chunk.utterances
        every = meeting_sentences(own, keep_backchannel=True)
        sentences = [s for s in every if not s.backchannel]
        words = sum(len(u.text.split()) for u in own)
        target = max(1, round(params.summary_ratio * words))
        selection = _select(sentences, target, self._pool_size(target), params)
        participants = participants_of(chunk.utterances)
        notes = MeetingNotes(
            summary=_summary_text(selection.summary, params) or "(nothing was said)",
            key_points=[_attributed(s) for s in selection.pool],
            action_items=find_action_items(every, participants_of(own) or participants),
            decisions=find_decisions(sentences),
            participants=participants,
        )
        return NotesResult(notes=notes, usage=Usage(), attempts=1)

    def _pool_size(self, summary_words: int) -> int:
        """Candidates to keep: `candidate_factor` times the summary's sentences (~18 words)."""
        sentences = max(1, round(summary_words / 18))
        return max(self.params.min_candidates, round(self.params.candidate_factor * sentences))

    def combine(self, parts: list[MeetingNotes], *, title: str, final: bool) -> NotesResult:
        """Merge notes: re-rank every part's candidates together, dedupe items and names."""
        params = self.params
        participants = _fuse_participants(parts)
        known = set(participants) | {p for part in parts for p in part.participants}
        candidates: list[Sentence] = []
        boost: list[float] = []
        seen: set[str] = set()
        summary_words = 0
        for part in parts:
            in_summary = f" {_norm(part.summary)} "
            for point in part.key_points:
                speaker, text = _split_attribution(point, known)
                key = _norm(text)
                chosen_by_part = bool(key) and f" {key} " in in_summary
                summary_words += len(text.split()) if chosen_by_part else 0
                if key in seen or not key:
                    continue
                seen.add(key)
                candidates.append(Sentence(text, speaker, len(candidates)))
                boost.append(params.summary_bonus if chosen_by_part else 0.0)
        if final:
            meeting_words = round(summary_words / params.summary_ratio)
            target = target_words_for(meeting_words, params)
        else:
            target = summary_words
        pool_size = 0 if final else self._pool_size(target)
        selection = _select(candidates, target, pool_size, params, boost)
        if not selection.summary:
            summary = " ".join(p.summary for p in parts if p.summary) or "(nothing was said)"
        else:
            summary = _summary_text(selection.summary, params)
        key_points = (
            [_attributed(s) for s in selection.key_points]
            if final
            else [_attributed(s) for s in selection.pool]
        )
        notes = MeetingNotes(
            summary=summary,
            key_points=key_points,
            action_items=merge_action_items([i for p in parts for i in p.action_items]),
            decisions=merge_decisions([d for p in parts for d in p.decisions]),
            participants=participants,
        )
        return NotesResult(notes=notes, usage=Usage(), attempts=1)


def _norm(text: str) -> str:
    return " ".join(words_of(text))


def _split_attribution(point: str, known: set[str]) -> tuple[str | None, str]:
    match = _ATTRIBUTION.match(point)
    if match and match.group(1) in known:
        return match.group(1), match.group(2)
    return None, point


def _fuse_participants(parts: Sequence[MeetingNotes]) -> list[str]:
    """Reciprocal-rank fusion of the parts' participant lists (each ordered by words spoken)."""
    score: dict[str, float] = {}
    for part in parts:
        for rank, name in enumerate(part.participants):
            if is_real_speaker(name):
                score[name] = score.get(name, 0.0) + 1.0 / (rank + 1)
    return sorted(score, key=lambda name: -score[name])


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
