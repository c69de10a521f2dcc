"""One root error with a few subclasses that say what went wrong and how to fix it.

The CLI turns any `GristmillError` into one line and exit code 2 (usage and configuration)
or into a per-item failure reason (input and LLM errors), never a traceback.
"""

from __future__ import annotations

from typing import Any


class GristmillError(Exception):
    """Root of every error gristmill raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class, message and attributes, so every subclass (whatever its
        keyword-only arguments) comes back whole from another process: a Dask worker's task."""
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(
    cls: type[GristmillError], args: tuple[Any, ...], state: dict[str, Any]
) -> GristmillError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigurationError(GristmillError):
    """Settings or engines are missing or inconsistent: the user has to change something."""


class UsageError(GristmillError):
    """The command line asked for something that cannot be done."""


class InputError(GristmillError):
    """One input item (a file, a document, a row) cannot be used; the rest of the run goes on."""

    def __init__(self, message: str, *, source: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.source = source


class LLMError(GristmillError):
    """A model call failed after the retries that were allowed."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        status_code: int | None = None,
        attempts: int = 1,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
        self.status_code = status_code
        self.attempts = attempts


class OutputValidationError(LLMError):
    """The model kept answering with output that does not fit the schema, even after repair."""

    def __init__(self, message: str, *, errors: list[str], last_output: str, attempts: int):
        super().__init__(message, attempts=attempts)
        self.errors = errors
        self.last_output = last_output


class DataQualityError(GristmillError):
    """An error-level data-quality expectation failed for one item."""

    def __init__(self, message: str, *, failed: list[dict[str, Any]]):
        super().__init__(message)
        self.failed = failed


class CollectionNotFound(ConfigurationError):
    """A collection asked for by name (to read it) does not exist in the vector store."""


class ChromaUnreachable(ConfigurationError):
    """The configured Chroma server does not answer (or is not a Chroma server)."""


class StoreLockedError(ConfigurationError):
    """Another process is writing to the same on-disk vector store."""


class RunFailed(GristmillError):
    """A pipeline run that ended with failed items; `report` says which and why.

    Flows return `Failed(message, data=RunFailed(message, report=report))`, not
    `Failed(data=report)`: Prefect turns a failed state's data into the exception it raises (for
    a plain `flow()` call, and in the engine under workers), and a report that is not an
    exception becomes "TypeError: Unexpected result for failed state" there. Use
    `tasks.reporting.state_report` to get the report from a state either way.
    """

    exit_code = 1

    def __init__(self, message: str, *, report: Any) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only `report` survives pickling
        return (_rebuild_run_failed, (self.message, self.report))


def _rebuild_run_failed(message: str, report: Any) -> RunFailed:
    return RunFailed(message, report=report)


class StoreUnavailableError(GristmillError):
    """The Chroma server stopped answering during a run; what was written stays written."""

    exit_code = 1


class NothingToIndex(InputError):
    """A document that is fine but holds no text to index (empty, front matter only, blank):
    reported as skipped, with the reason in words, not as a failure."""


class ShardsUnfinished(GristmillError):
    """A sharded job whose shard left no report (it crashed on every attempt): nothing is
    written as a whole; a re-run makes the same shards and redoes only the unfinished work."""

    exit_code = 1
