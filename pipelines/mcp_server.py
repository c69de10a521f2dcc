"""`gristmill mcp`: a Model Context Protocol server, so agents and desktop assistants can search
and ask the ingested documents.

Tools `search`, `ask` and `list_collections` run `tasks.search.DocumentSearch`, the code
`gristmill query`, `ask` and `api` run; the model and the store are opened once, before the
server starts. Transports: stdio (a desktop assistant starts the command; stdout carries only
the protocol, everything else goes to stderr) and streamable HTTP at `/mcp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from tasks.answers import Answer
from tasks.errors import GristmillError
from tasks.search import DocumentSearch, hit_record

if TYPE_CHECKING:
    from tasks.settings import Settings

INSTRUCTIONS = """Searches documents ingested with gristmill (a Chroma vector store ranked by
embeddings and BM25). Use `search` for the passages that match a query, `ask` for an answer
with numbered citations to those passages, `list_collections` to see what is there."""


class SearchResult(BaseModel):
    """The chunks found, best first, with the fields `gristmill query --json` prints."""

    collection: str
    hits: list[dict[str, Any]]


class Collections(BaseModel):
    """The chunk collections in the store and their sizes."""

    default: str
    collections: list[dict[str, Any]]


def _tool_errors(call: Callable[[], Any]) -> Any:
    """Our errors as a tool error in words (the caller reads it); anything else is a crash."""
    try:
        return call()
    except GristmillError as exc:
        raise ToolError(str(exc)) from None


def build_server(search: DocumentSearch) -> MCPServer:
    """The MCP server and its tools over one opened `search`."""
    server: MCPServer = MCPServer("gristmill", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(name="search", title="Search the documents")
    def search_documents(
        text: Annotated[str, Field(description="What to search for.", min_length=1)],
        k: Annotated[int, Field(description="How many chunks to return.", ge=1, le=100)] = 5,
        collection: Annotated[
            str | None, Field(description="Collection to search; default: the configured one.")
        ] = None,
        where: Annotated[
            dict[str, Any] | None,
            Field(description='Metadata filter, e.g. {"source": "faq.md"}.'),
        ] = None,
    ) -> SearchResult:
        """The chunks of the ingested documents that best match `text`, best first (nearest by
        embedding, fused with BM25); `score` is the cosine similarity."""
        hits = _tool_errors(lambda: search.query(text, k, where, collection))
        name = collection or search.settings.collection
        return SearchResult(collection=name, hits=[hit_record(hit) for hit in hits])

    @server.tool(title="Answer from the documents")
    def ask(
        question: Annotated[str, Field(description="The question to answer.")],
        k: Annotated[int, Field(description="Chunks to answer from.", ge=1, le=50)] = 5,
        collection: Annotated[
            str | None, Field(description="Collection to use; default: the configured one.")
        ] = None,
    ) -> Answer:
        """An answer to `question` from the ingested documents, each claim cited as [n] with the
        chunk it comes from. Questions that try to change the instructions are refused."""
        answer: Answer = _tool_errors(lambda: search.ask(question, k, None, collection))
        if answer.refused:
            raise ToolError(f"refused: {answer.reason}")
        return answer

    @server.tool(title="List the collections")
    def list_collections() -> Collections:
        """The collections of ingested documents and how many chunks each holds."""
        found = _tool_errors(search.collections)
        return Collections(default=search.settings.collection, collections=found)

    return server


def serve_mcp(
    settings: Settings, transport: str, host: str, port: int, echo: Callable[[str], None]
) -> None:
    """Load the model and open the store, then serve MCP until the client or Ctrl-C ends it.

    Raises GristmillError before serving when the settings or the model files are wrong."""
    search = DocumentSearch(settings)
    search.warm()
    server = build_server(search)
    if transport == "stdio":
        echo(f"gristmill mcp: serving {settings.collection!r} on stdio")
        server.run("stdio")
        return
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    echo(f"gristmill mcp: serving {settings.collection!r} at http://{shown}:{port}/mcp")
    server.run("streamable-http", host=host, port=port)
