"""gristmill's settings: one object, read once from the environment and an optional `.env`.

Every field can be set as `GRISTMILL_<FIELD>`; the ecosystem's own names `OPENAI_API_KEY` and
`OPENAI_BASE_URL` are honoured too. Only the CLI and deployments build a `Settings`; everything
below a flow receives the values (or the engines built from them) as arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_EVERY = re.compile(r"^every\s+(\d+)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#L-]+$")


def schedule_spec(text: str) -> tuple[Literal["none", "interval", "cron"], str | int]:
    """A schedule in words, checked without importing Prefect: `("interval", seconds)` for
    `every 30s|15m|1h|1d`, `("cron", line)` for a five-field cron line, `("none", "")` for
    `none`/`off`. Raises ValueError naming what is wrong (Prefect checks a cron line fully)."""
    spoken = " ".join(text.strip().lower().split())
    if spoken in ("", "none", "off"):
        return ("none", "")
    every = _EVERY.match(spoken)
    if every:
        seconds = int(every.group(1)) * _SECONDS[every.group(2)]
        if seconds < 1:
            raise ValueError(f"schedule {text!r}: the interval must be at least 1 second")
        return ("interval", seconds)
    fields = text.split()
    if len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields):
        return ("cron", " ".join(fields))
    raise ValueError(
        f"schedule {text!r} is neither a cron line ('0 2 * * *'), an interval ('every 15m') "
        "nor 'none'"
    )


class ModelPrice(BaseModel):
    """USD per million tokens."""

    input: float
    output: float = 0.0


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
    "text-embedding-3-small": ModelPrice(input=0.02),
    "text-embedding-3-large": ModelPrice(input=0.13),
}


class Settings(BaseSettings):
    """Everything gristmill can be told, with the defaults that run fully offline."""

    model_config = SettingsConfigDict(
        env_prefix="GRISTMILL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Field(
        Path("data"),
        description="Root of every default input and output path (relative to the working dir).",
    )
    engine: Literal["auto", "offline", "openai"] = Field(
        "auto",
        description="LLM engine: 'openai' needs an API key or base URL; 'auto' picks openai when "
        "one is configured and the offline extractive engine otherwise.",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GRISTMILL_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key for the OpenAI-compatible endpoint. Never logged.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GRISTMILL_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="Base URL of an OpenAI-compatible API (OpenAI, vLLM, Ollama, LM Studio).",
    )
    llm_model: str = Field("gpt-4o-mini", description="Chat model name for the openai engine.")
    llm_temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature.")
    llm_timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    llm_max_retries: int = Field(
        4,
        ge=0,
        description="Transport retries per request (429 with Retry-After, 5xx, timeouts, "
        "dropped connections), done by the openai SDK with exponential backoff and jitter.",
    )
    llm_validation_attempts: int = Field(
        3,
        ge=1,
        description="Attempts per chunk when the output is invalid: first, a retry at a higher "
        "temperature, then a repair prompt carrying the validation errors.",
    )
    llm_concurrency: int = Field(4, ge=1, description="Chunk summaries in flight at once.")
    llm_json_schema: bool = Field(
        True,
        description="Ask for structured output with response_format json_schema; turn off for "
        "servers that only support json_object.",
    )
    chunk_tokens: int = Field(
        2000, ge=100, description="Token budget of one transcript chunk (cl100k_base tokens)."
    )
    chunk_overlap_tokens: int = Field(
        150, ge=0, description="Tokens of context repeated from the previous chunk."
    )
    reduce_tokens: int = Field(
        6000,
        ge=500,
        description="Most tokens of partial summaries combined in one call; above it the combine "
        "step runs in several passes (never truncates).",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per million tokens by model, as JSON; used for estimated cost.",
    )

    embedding_engine: Literal["local", "openai"] = Field(
        "local", description="Embedder: local ONNX all-MiniLM-L6-v2, or the OpenAI API."
    )
    embedding_model: str = Field(
        "text-embedding-3-small", description="Embedding model for the openai embedder."
    )
    embedding_batch_size: int = Field(64, ge=1, description="Texts per embedding call.")
    model_dir: Path | None = Field(
        None,
        description="Folder with model.onnx and tokenizer.json for the local embedder; "
        "default: <data_dir>/models/all-MiniLM-L6-v2, provisioned by `make setup`.",
    )
    collection: str = Field("gristmill", description="Chroma collection name.")
    chroma_host: str | None = Field(None, description="Chroma server host; unset: on-disk Chroma.")
    chroma_port: int = Field(8000, description="Chroma server port.")
    chroma_ssl: bool = Field(False, description="Use HTTPS to reach the Chroma server.")
    chroma_token: SecretStr | None = Field(None, description="Chroma server auth token.")
    doc_chunk_tokens: int = Field(300, ge=50, description="Token budget of a document chunk.")
    doc_chunk_overlap_tokens: int = Field(40, ge=0, description="Overlap between document chunks.")
    doc_chunk_context: bool = Field(
        False,
        description="Embed and index each document chunk with a line naming its document's "
        "title, or a transcript's meeting and the chunk's speakers (the stored text stays as "
        "written); off by default: it lowered whole-collection recall on QMSum "
        "(benchmarks/README.md). Changing it re-embeds a collection at its next ingest.",
    )

    schedule_timezone: str = Field(
        "UTC",
        description="IANA time zone of the deployments' schedules (`gristmill serve`), "
        "e.g. Europe/Berlin.",
    )
    summarize_schedule: str = Field(
        "0 2 * * *",
        description="When `summarize-transcripts/nightly` runs under `gristmill serve`: a cron "
        "line, an interval (`every 30s`, `every 15m`, `every 1h`, `every 1d`) or `none`.",
    )
    ingest_schedule: str = Field(
        "every 1h",
        description="When `ingest-documents/hourly` runs under `gristmill serve`: a cron line, "
        "an interval (`every 15m`) or `none`.",
    )

    server: Literal["auto", "ephemeral"] = Field(
        "auto",
        description="When no Prefect server is known (no PREFECT_API_URL, no `gristmill server` "
        "up for this data dir): 'auto' starts one in the background on first use and keeps it "
        "for the next commands; 'ephemeral' starts a temporary one inside every command.",
    )
    server_idle_minutes: float = Field(
        30.0,
        gt=0,
        description="A server started by 'auto' stops after this many minutes without a "
        "gristmill command or a running flow run.",
    )

    work_pool: str | None = Field(
        None,
        description="Prefect work pool whose workers run the shards of a `--shards N` job (each "
        "a child flow run of the pipeline's `shard` deployment); unset: shards run in this "
        "process. Every worker needs the same data_dir (a shared filesystem).",
    )
    shard_attempts: int = Field(
        3,
        ge=1,
        description="Times a shard that crashed (its worker killed, its machine lost) is run.",
    )
    shard_silence_s: float = Field(
        600.0,
        ge=10,
        description="A shard run on a work pool with no heartbeat (nor a step of its start) for "
        "this long is marked Crashed and run again; keep it a few times the workers' "
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY (180 s by default).",
    )

    batch_concurrency: int = Field(16, ge=1, description="Batch requests in flight at once.")
    batch_rpm: int | None = Field(None, ge=1, description="Batch requests per minute limit.")
    batch_tpm: int | None = Field(None, ge=1, description="Batch tokens per minute limit.")
    batch_rows_per_task: int = Field(
        100,
        ge=1,
        description="Rows per batch task run (chat mode); lines per batch file (Batch API mode).",
    )
    batch_global_limit: str | None = Field(
        None,
        description="Name of a Prefect global concurrency limit with slot decay that rate-limits "
        "batch requests across every process and worker sharing the Prefect server "
        "(`prefect gcl create NAME --limit 16 --slot-decay-per-second 2.5` = 150/min).",
    )

    task_runner: Literal["thread", "dask"] = Field(
        "thread",
        description="Where a flow's tasks run: 'thread' (a thread pool in the flow's process) or "
        "'dask' (a dask.distributed cluster through prefect-dask: the one at `dask_address`, "
        "else a LocalCluster started for the run).",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of the Dask cluster for task_runner=dask, e.g. tcp://host:8786; "
        "unset: a LocalCluster of worker processes on this machine, for the run.",
    )

    @property
    def transcripts_dir(self) -> Path:
        return self.data_dir / "transcripts"

    @property
    def summaries_dir(self) -> Path:
        return self.data_dir / "summaries"

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)"
            ) from None
        return value

    @field_validator("summarize_schedule", "ingest_schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        schedule_spec(value)
        return value

    @property
    def batch_dir(self) -> Path:
        return self.data_dir / "batch"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def embedding_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models" / "all-MiniLM-L6-v2"

    @property
    def llm_engine(self) -> Literal["offline", "openai"]:
        """The engine `auto` resolves to."""
        if self.engine != "auto":
            return self.engine
        return "openai" if (self.openai_api_key or self.openai_base_url) else "offline"

    def price_of(self, model: str) -> ModelPrice | None:
        """Price for a model, matching dated variants (gpt-4o-mini-2024-07-18) by prefix."""
        if model in self.prices:
            return self.prices[model]
        for name in sorted(self.prices, key=len, reverse=True):
            if model.startswith(name):
                return self.prices[name]
        return None

    def masked(self) -> dict[str, object]:
        """Settings as a dict for display, secrets shown only as set / unset."""
        shown: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif name == "prices":
                value = f"{len(value)} models"
            shown[name] = value
        return shown
