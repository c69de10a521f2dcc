"""The transcript formats, each read into turns that `turns.to_utterances` numbers."""
