"""Connecting to Chroma: an embedded store under the data dir or a Chroma server (checked,
with timeouts and auth), the writer lock an embedded store needs, and a lost server in words.

An on-disk (PersistentClient) store has one writer at a time, enforced with a file lock,
because Chroma's embedded mode is thread-safe but not process-safe."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import (
    ChromaUnreachable,
    ConfigurationError,
    StoreLockedError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from tasks.settings import Settings

LOCK_FILE = "gristmill-writer.lock"
# Seconds to wait for a Chroma server's heartbeat before saying it cannot be reached.
HEARTBEAT_TIMEOUT_S = 10.0
# Seconds any one request to a Chroma server may take (a write of a full batch included) before
# it counts as lost: chromadb's HTTP client waits forever, so a server that hangs mid-run would
# hang a nightly run with it.
REQUEST_TIMEOUT_S = 300.0


def open_chroma(settings: Settings) -> ClientAPI:
    """A Chroma server client when `chroma_host` is set, else an on-disk client under chroma_dir."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_host:
        headers = _auth_headers(settings)
        url = check_chroma_server(settings)
        try:
            client = chromadb.HttpClient(
                host=settings.chroma_host,
                port=settings.chroma_port,
                ssl=settings.chroma_ssl,
                headers=headers,
                settings=chroma_settings,
            )
        except Exception as exc:  # chromadb raises ValueError / ChromaError on a failed handshake
            raise _unreachable(url, f"{type(exc).__name__}: {exc}") from None
        _bound_requests(client)
        return client
    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)


def _bound_requests(client: ClientAPI) -> None:
    """Give the HTTP client's requests a timeout (`REQUEST_TIMEOUT_S`); a timed-out request
    then surfaces as `StoreUnavailableError` through `server_errors`.

    chromadb (1.x) has no setting for it, so this sets it on the httpx session its FastAPI
    client keeps; tests/tasks/test_chroma_server.py freezes a real server mid-run to prove it works.
    """
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=HEARTBEAT_TIMEOUT_S)


def _auth_headers(settings: Settings) -> dict[str, str]:
    if settings.chroma_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.chroma_token.get_secret_value()}"}


def check_chroma_server(settings: Settings) -> str:
    """Check the server's heartbeat within HEARTBEAT_TIMEOUT_S; return its base URL.

    Raises ConfigurationError saying what is wrong (unreachable, refused, not Chroma).

    chromadb's HTTP client has no timeout: a server that accepts connections but never answers
    (stopped, overloaded, or another service on that port) would hang the run without a word.
    """
    import httpx
    from chromadb.api.base_http_client import BaseHTTPClient

    host = settings.chroma_host or ""
    try:
        # chromadb's own rule: a host given as a URL keeps its scheme and port
        url = BaseHTTPClient.resolve_url(host, settings.chroma_ssl, "", settings.chroma_port)
    except ValueError as exc:
        raise ConfigurationError(
            f"GRISTMILL_CHROMA_HOST {host!r} is not a host name or URL: {exc}",
            hint="set a host name (and GRISTMILL_CHROMA_PORT) or a URL such as "
            "http://chroma.internal:8000",
        ) from None
    heartbeat = f"{url}/api/v2/heartbeat"
    try:
        response = httpx.get(
            heartbeat, headers=_auth_headers(settings), timeout=HEARTBEAT_TIMEOUT_S
        )
    except httpx.TimeoutException:
        raise _unreachable(url, f"no answer within {HEARTBEAT_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise _unreachable(url, f"{type(exc).__name__}: {exc}") from None
    if response.status_code in (401, 403):
        raise ConfigurationError(
            f"the Chroma server at {url} refused the request (HTTP {response.status_code})",
            hint="check GRISTMILL_CHROMA_TOKEN",
        )
    try:
        answer = response.json() if response.is_success else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or "nanosecond heartbeat" not in answer:
        raise ConfigurationError(
            f"{url} is not a Chroma server: GET /api/v2/heartbeat answered HTTP "
            f"{response.status_code}",
            hint="check GRISTMILL_CHROMA_HOST and GRISTMILL_CHROMA_PORT (Chroma 1.x serves "
            "/api/v2)",
        )
    return url


def _unreachable(url: str, reason: str) -> ChromaUnreachable:
    return ChromaUnreachable(
        f"cannot reach the Chroma server at {url}: {reason}"[:400],
        hint="start it (`chroma run --path DIR --port N`) or unset GRISTMILL_CHROMA_HOST",
    )


class WriterLock:
    """An exclusive, non-blocking `flock` on `<chroma dir>/gristmill-writer.lock`.

    The kernel drops the lock when the holder exits, even on SIGKILL, so a crash never leaves a
    stale lock behind. Advisory: it keeps gristmill processes apart, not other programs.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StoreLockedError(
                f"another process ({holder or 'unknown'}) is writing to the vector store at "
                f"{self.path}",
                hint="wait for it to finish, or run a Chroma server and set "
                "GRISTMILL_CHROMA_HOST so several writers can share it",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire_writer_lock(path: Path) -> WriterLock:
    """Take the writer lock of the on-disk store at `path`, or raise StoreLockedError at once."""
    return WriterLock(path).acquire()


def require_chroma_server(settings: Settings, writers: str) -> None:
    """Raise a `ConfigurationError` in words unless the store is a Chroma server: `writers`
    (who would write at once, e.g. "shards on a work pool") need one, an on-disk store takes
    one writer on one machine."""
    if not settings.chroma_host:
        raise ConfigurationError(
            f"{writers}: an on-disk Chroma has one writer; set GRISTMILL_CHROMA_HOST "
            "(and _PORT) to a Chroma server (`chroma run`)"
        )


@contextlib.contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """Hold the writer lock for an on-disk store; a Chroma server needs none."""
    if settings.chroma_host:
        yield
        return
    with acquire_writer_lock(settings.chroma_dir):
        yield


@contextlib.contextmanager
def server_errors() -> Iterator[None]:
    """Turn a lost connection to the Chroma server into StoreUnavailableError, in words.

    `open_chroma` checks the server before a run; this covers it going away during one.
    """
    import httpx

    try:
        yield
    except httpx.TransportError as exc:
        raise StoreUnavailableError(
            f"lost the connection to the Chroma server: {type(exc).__name__}: {exc}"[:400],
            hint="what was written is kept; run the same command again once the server is "
            "back to finish",
        ) from exc
    except Exception as exc:
        # A Chroma server that has not yet flushed a new collection's vector segment answers
        # reads of it with this error (chroma-core/chroma#4212, seen here on a loaded machine
        # right after the collection was created); a moment later the same read works, so it
        # counts as the server being briefly unavailable: the batch is retried.
        if type(exc).__name__ == "InternalError" and "Nothing found on disk" in str(exc):
            raise StoreUnavailableError(
                f"the Chroma server could not read its own index yet: {exc}"[:400],
                hint="a known Chroma server race (chroma-core/chroma#4212); run the same "
                "command again to finish",
            ) from exc
        raise
