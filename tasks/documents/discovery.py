"""Finding documents: files under folders, filtered by globs, named relative to their folder."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from tasks.documents.model import DEFAULT_MAX_BYTES, FORMATS
from tasks.errors import UsageError


class DocumentPath(NamedTuple):
    """A file found by `discover_documents` and the folder its source name is relative to."""

    path: Path
    root: Path

    @property
    def source(self) -> str:
        return source_name(self.path, self.root)


def source_name(path: Path, root: Path | None) -> str:
    """`path` relative to `root` in POSIX form (the path as given when it is not under root)."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _matches(relative: str, patterns: Iterable[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover_documents(
    paths: Sequence[Path],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[DocumentPath]:
    """Files under `paths` (folders recursively), sorted, hidden ones skipped.

    Patterns are globs matched against the path relative to the folder given and against the
    file name (`*.md`, `policies/*`). Without `include`, every supported format is taken from
    folders; a file named explicitly is always taken unless excluded, so an unsupported one is
    reported by `load_document` instead of vanishing.
    """
    found: dict[Path, DocumentPath] = {}
    for given in paths:
        given = Path(given)
        if given.is_file():
            relative = given.name
            if _matches(relative, exclude or []) or (include and not _matches(relative, include)):
                continue
            found.setdefault(given.resolve(), DocumentPath(given, given.parent))
            continue
        if not given.is_dir():
            raise UsageError(f"no such file or folder: {given}")
        for path in given.rglob("*"):
            relative_parts = path.relative_to(given).parts
            if any(part.startswith(".") for part in relative_parts) or not path.is_file():
                continue
            relative = "/".join(relative_parts)
            if include:
                if not _matches(relative, include):
                    continue
            elif path.suffix.lower() not in FORMATS:
                continue
            if _matches(relative, exclude or []):
                continue
            found.setdefault(path.resolve(), DocumentPath(path, given))
    return sorted(found.values(), key=lambda d: (d.root.as_posix(), d.source))


def file_hash(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """`Document.document_hash` of the file without parsing it; None when the file is empty,
    over `max_bytes` or unreadable (`load_document` then says why)."""
    try:
        size = Path(path).stat().st_size
        if not 0 < size <= max_bytes:
            return None
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
