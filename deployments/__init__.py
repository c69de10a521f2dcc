"""Deployment definitions for gristmill's pipelines, kept apart from the flow code."""

from deployments.definitions import (
    DEPLOYMENT_BUILDERS,
    batch_deployment,
    build_deployments,
    describe_schedule,
    ingest_deployment,
    summarize_deployment,
)

__all__ = [
    "DEPLOYMENT_BUILDERS",
    "batch_deployment",
    "build_deployments",
    "describe_schedule",
    "ingest_deployment",
    "summarize_deployment",
]
