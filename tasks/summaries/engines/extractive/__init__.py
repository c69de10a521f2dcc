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
