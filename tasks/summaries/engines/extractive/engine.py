"""`ExtractiveSummarizer`: the offline `Summarizer`, extractive map-reduce with no model calls."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tasks.chunking import Chunk
from tasks.llm import Usage
from tasks.summaries.engines.extractive.items import (
    AGENDA,
    DECISION,
    find_action_items,
    find_decisions,
    merge_action_items,
    merge_decisions,
)
from tasks.summaries.engines.extractive.ranking import (
    DEFAULT_PARAMS,
    ExtractiveParams,
    concepts_of,
    rank_by_coverage,
    target_words_for,
)
from tasks.summaries.engines.extractive.text import (
    Sentence,
    content_terms,
    is_real_speaker,
    meeting_sentences,
    participants_of,
    tidy_sentence,
    words_of,
)
from tasks.summaries.key_points import distinct_points, point_terms, repeats
from tasks.summaries.models import MeetingNotes, NotesResult
from tasks.transcripts.model import Utterance

ENGINE = "offline-extractive"
MODEL = "extractive-v1"
VERSION = "extractive-3"


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
        cues = [params.cue_bonus if AGENDA.search(t) or DECISION.search(t) else 0.0 for t in texts]
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
    return _Selection(
        summary=[sentences[i] for i in sorted(chosen)],
        pool=[sentences[i] for i in sorted(set(pool) | set(chosen))],
        key_points=[sentences[i] for i in _key_points(texts, eligible, chosen, boost, params)],
    )


def _key_points(
    texts: Sequence[str],
    eligible: Sequence[bool],
    summary: Sequence[int],
    boost: Sequence[float] | None,
    params: ExtractiveParams,
) -> list[int]:
    """Key points that add to the summary, in meeting order.

    Greedy coverage again, but with the summary's concepts counted as said: a point earns only
    what the summary leaves out (MMR-style novelty against the summary and earlier points).
    Candidates are short statements that repeat no summary sentence (`repeats`); the meeting
    is cut into `max_key_points` equal stretches and each gives at most one point, so the
    points stand for different parts of it.
    """
    said = [point_terms(texts[i]) for i in summary]
    in_summary = set(summary)
    candidates = [
        ok
        and i not in in_summary
        and len(text.split()) <= params.key_point_max_words
        and not text.rstrip().endswith("?")
        and not any(repeats(point_terms(text), s) for s in said)
        for i, (ok, text) in enumerate(zip(eligible, texts, strict=True))
    ]
    stretches = max(1, params.max_key_points)
    ranking = replace(params, length_exponent=params.key_point_length_exponent)
    key: list[int] = []
    # in a small pool no new concept may be mentioned twice: then one mention counts
    for min_df in dict.fromkeys((params.min_concept_df, 1)):
        key = rank_by_coverage(
            texts,
            eligible=candidates,
            max_count=params.max_key_points,
            boost=boost,
            covered={c for i in summary for c in concepts_of(texts[i])},
            groups=[i * stretches // len(texts) for i in range(len(texts))],
            params=replace(ranking, min_concept_df=min_df),
        )
        if key:
            break
    kept = set(distinct_points([texts[i] for i in key], ""))
    return sorted(i for i in key if texts[i] in kept)


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
