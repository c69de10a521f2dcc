"""`gristmill api`: the search service. FastAPI on uvicorn, the model and the store opened once.

    POST /query        {"text", "k"?, "where"?, "collection"?} -> {"collection", "hits": [...]}
    POST /ask          {"question", "k"?, "where"?, "collection"?} -> the Answer `ask --json` prints
    GET  /collections  -> {"default", "collections": [{"name", "count"}]}
    GET  /health       -> {"status": "ok", ...} (503 while the store cannot be reached)

Every answer goes through `tasks.search.DocumentSearch`, the code `gristmill query` and `ask`
run. Errors are JSON `{"error": "..."}` with a status: 404 unknown collection, 422 a bad body or
filter (and a refused question, with the Answer beside the error), 502 the LLM failed, 503 the
store is unavailable; never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import (
    ChromaUnreachable,
    CollectionNotFound,
    GristmillError,
    LLMError,
    StoreLockedError,
    StoreUnavailableError,
    UsageError,
)
from tasks.redaction import redact
from tasks.search import DocumentSearch, hit_record

if TYPE_CHECKING:
    from tasks.settings import Settings

logger = logging.getLogger("gristmill.api")

MAX_QUERY_K = 100
MAX_ASK_K = 50


class QueryBody(BaseModel):
    """`POST /query`: what `gristmill query TEXT -k K --where ... --collection C` takes."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=10_000)
    k: int = Field(5, ge=1, le=MAX_QUERY_K)
    where: dict[str, Any] | None = None
    collection: str | None = None


class AskBody(BaseModel):
    """`POST /ask`: what `gristmill ask QUESTION -k K --collection C` takes."""

    model_config = ConfigDict(extra="forbid")

    question: str
    k: int = Field(5, ge=1, le=MAX_ASK_K)
    where: dict[str, Any] | None = None
    collection: str | None = None


def error_status(exc: GristmillError) -> int:
    """The HTTP status for one of our errors."""
    if isinstance(exc, CollectionNotFound):
        return 404
    if isinstance(exc, StoreUnavailableError | ChromaUnreachable | StoreLockedError):
        return 503
    if isinstance(exc, UsageError):
        return 422
    if isinstance(exc, LLMError):
        return 502
    return 500


def create_app(settings: Settings, search: DocumentSearch | None = None) -> FastAPI:
    """The service; `search` (else one made from `settings`) is opened and warmed at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.search = search or DocumentSearch(settings)
        app.state.search.warm()
        yield

    app = FastAPI(
        title="gristmill search",
        description="Search and ask the documents ingested with `gristmill ingest`.",
        lifespan=lifespan,
    )

    def searcher(request: Request) -> DocumentSearch:
        found: DocumentSearch = request.app.state.search
        return found

    @app.exception_handler(GristmillError)
    async def own_error(request: Request, exc: GristmillError) -> JSONResponse:
        status = error_status(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _body_problems(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the type and a redacted message in the log; the caller learns only that it failed
        logger.error("%s %s failed: %s", request.method, request.url.path, _described(exc))
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); see the service's log"},
            status_code=500,
        )

    @app.get("/health")
    def health(request: Request) -> JSONResponse:
        search = searcher(request)
        body: dict[str, Any] = {
            "collection": search.settings.collection,
            "embedder": search.embedder.name,
            "engine": search.engine,
        }
        try:
            search.client().heartbeat()
        except Exception as exc:
            message = str(exc) if isinstance(exc, GristmillError) else _described(exc)
            return JSONResponse(
                {"status": "unavailable", "error": f"vector store: {message}", **body},
                status_code=503,
            )
        return JSONResponse({"status": "ok", **body})

    @app.get("/collections")
    def collections(request: Request) -> dict[str, Any]:
        search = searcher(request)
        return {"default": search.settings.collection, "collections": search.collections()}

    @app.post("/query")
    def query(body: QueryBody, request: Request) -> dict[str, Any]:
        search = searcher(request)
        hits = search.query(body.text, body.k, body.where, body.collection)
        name = body.collection or search.settings.collection
        return {"collection": name, "hits": [hit_record(hit) for hit in hits]}

    @app.post("/ask")
    def ask(body: AskBody, request: Request) -> Any:
        answer = searcher(request).ask(body.question, body.k, body.where, body.collection)
        record = answer.model_dump(mode="json")
        if answer.refused:
            return JSONResponse({"error": f"refused: {answer.reason}", **record}, status_code=422)
        return record

    return app


def _body_problems(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors in a line: which field, what is wrong."""
    problems = []
    for error in errors[:5]:
        kind, location = error.get("type"), tuple(error.get("loc", ()))
        if kind == "json_invalid":
            return f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}".strip()
        if location == ("body",):
            return "the body must be a JSON object (and sent as Content-Type: application/json)"
        field = ".".join(str(part) for part in location if part != "body")
        problems.append(f"{field}: {error.get('msg')}" if field else str(error.get("msg")))
    return "; ".join(problems)


def _described(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:400]


def serve_api(settings: Settings, host: str, port: int, echo: Callable[[str], None]) -> None:
    """Load the model and open the store, then serve until interrupted (Ctrl-C or SIGTERM).

    Raises GristmillError before serving when the settings or the model files are wrong."""
    import uvicorn

    search = DocumentSearch(settings)
    search.warm()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    echo(
        f"gristmill api: searching {settings.collection!r} with {search.embedder.name}, answering "
        f"with {search.engine}; http://{shown}:{port} (API docs at /docs; Ctrl-C stops)"
    )
    uvicorn.run(
        create_app(settings, search),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
