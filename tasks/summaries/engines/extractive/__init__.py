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

text     cleaning, words, sentences, speakers and participants
ranking  `ExtractiveParams` and greedy concept coverage
items    action items and decisions, found from their language
engine   `ExtractiveSummarizer` (map and combine) and `summarize_utterances` (one pass)
"""

from tasks.summaries.engines.extractive.engine import (
    ENGINE,
    MODEL,
    VERSION,
    ExtractiveSummarizer,
    summarize_utterances,
)
from tasks.summaries.engines.extractive.items import (
    find_action_items,
    find_decisions,
    merge_action_items,
    merge_decisions,
)
from tasks.summaries.engines.extractive.ranking import (
    DEFAULT_PARAMS,
    ExtractiveParams,
    rank_by_coverage,
    target_words_for,
)
from tasks.summaries.engines.extractive.text import (
    clean_text,
    content_terms,
    is_backchannel,
    meeting_sentences,
    participants_of,
    split_sentences,
    words_of,
)

__all__ = [
    "DEFAULT_PARAMS",
    "ENGINE",
    "MODEL",
    "VERSION",
    "ExtractiveParams",
    "ExtractiveSummarizer",
    "clean_text",
    "content_terms",
    "find_action_items",
    "find_decisions",
    "is_backchannel",
    "meeting_sentences",
    "merge_action_items",
    "merge_decisions",
    "participants_of",
    "rank_by_coverage",
    "split_sentences",
    "summarize_utterances",
    "target_words_for",
    "words_of",
]
