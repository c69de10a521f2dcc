"""Batch processing of tabular records: read in chunks, render a prompt per row, call a model
under shared rate limits, validate, write every input row exactly once.

reading (rows, ids, screening) -> job (prompt, schema, answer check) -> dispatch (batches of
rows through an engine: engines/chat, engines/batch_api, engines/offline; limits; journal)
-> results -> writing (output, dead letters) -> quality (gates) -> report.
"""
