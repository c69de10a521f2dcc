"""Meeting text made fit to select from: noise cleaned, words, sentences and speakers.

Cleaning drops ASR markers, fillers, stutters and false starts; back-channel turns ("Yeah.",
"Mm-hmm.") are flagged; turns are split into sentences attributed to their speakers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.transcripts.model import Utterance


def wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


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

_SHORT_WORDS = wordset(
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


_TWO_LETTER_WORDS = wordset(
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


STOPWORDS = wordset(
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
CONVERSATIONAL = wordset(
    """yeah yes yep yup no nope okay ok right alright cool sure great good fine fair true exactly
    really well oh ah wow hmm huh uh um mm thanks thank please sorry hello hi bye actually
    basically probably maybe perhaps definitely certainly totally absolutely obviously anyway
    like just kind sort stuff thing things lot lots bit bunch gonna gotta wanna think thought
    know knew mean guess suppose say said says saying tell told see seen look looking looks
    get gets getting got go goes going went come comes coming came want wanted wants
    make makes made put take took let's yeah hmm mhm uh-huh mm-hmm ooh whatever somewhere
    something someone anyway pretty quite little big"""
)
_BACKCHANNEL = wordset(
    """yeah yes yep yup no nope okay ok right alright cool sure great good fine fair true exactly
    really well oh ah wow hmm huh mhm uh-huh mm-hmm thanks thank you so and but or
    indeed totally absolutely agreed correct nice interesting lovely perfect brilliant"""
)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def stem(word: str) -> str:
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
        stem(w)
        for w in words_of(text)
        if w not in STOPWORDS and w not in CONVERSATIONAL and len(w) > 1 and not w.isdigit()
    ]


def is_backchannel(text: str) -> bool:
    """True for turns that only acknowledge ("Yeah.", "Mm-hmm.", "Okay, right.")."""
    tokens = words_of(text)
    content = [t for t in tokens if t not in STOPWORDS and t not in _BACKCHANNEL]
    return not content or (len(content) < 2 and len(tokens) <= 4)


_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = wordset(
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
