"""Row engines: online chat completions, the OpenAI Batch API, and the offline built-in tasks."""
