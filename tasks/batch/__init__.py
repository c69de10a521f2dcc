"""Batch processing of tabular records: read in chunks, render a prompt per row, call a model
under shared rate limits, validate, write every input row exactly once.

plan (the run from its parameters) -> reading (rows, ids, screening against the job: prompt,
schema, answer check) -> quality (input gates) -> dispatch (batches of rows through an engine:
engines/chat under limits, engines/batch_api, engines/offline; the journal's rows reused)
-> results -> writing (output and dead letters) -> quality (output gates) -> report.
"""
