"""Prefect tasks for gristmill and the plain functions they wrap."""
