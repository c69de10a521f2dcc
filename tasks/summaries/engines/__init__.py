"""The summary engines behind the `Summarizer` protocol; `factory.build_summarizer` picks one.

llm         `LLMSummarizer`: a chat model through `tasks.llm`, validated structured output
extractive  `ExtractiveSummarizer`: the offline engine, no model at all

This package module imports nothing, so a shared module may use an engine's helpers (the key
points check uses the extractive engine's text rules) without an import cycle.
"""
