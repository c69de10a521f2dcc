"""Finding transcript files under the paths given, and keeping outputs out of the inputs."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.errors import UsageError
from tasks.transcripts.model import SUPPORTED_SUFFIXES, FoundTranscript


def discover_transcripts(
    paths: list[Path], *, skip: Path | None = None
) -> tuple[list[FoundTranscript], list[tuple[str, str]]]:
    """Expand folders into supported transcript files; report unusable paths instead of raising.

    The folder `skip` (the output folder, when it lies inside an input folder) is not read:
    summaries are not transcripts.
    """
    skip = skip.resolve() if skip is not None else None
    files: list[FoundTranscript] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(file: Path, root: Path) -> None:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            files.append(FoundTranscript(file, file.relative_to(root)))

    for path in paths:
        if path.is_dir():
            for file in _walk(path, skip):
                add(file, path)
        elif path.is_file():
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                add(path, path.parent)
            else:
                problems.append((str(path), unsupported_suffix_message(path)))
        elif path.exists():
            problems.append((str(path), "not a regular file or folder"))
        else:
            problems.append((str(path), "no such file or folder"))
    return files, problems


def check_output_folder(paths: list[Path], out: Path) -> None:
    """Refuse an output folder that is an input or holds one: the next run would read its
    summaries as transcripts, and a Markdown summary could replace a Markdown transcript."""
    target = out.resolve()
    for path in paths:
        where = path.resolve()
        if where == target or target in where.parents:
            raise UsageError(
                f"the output folder {out} {'is' if where == target else 'holds'} the input {path};"
                " write summaries to a folder of their own (it may lie inside the input folder)"
            )


def _walk(root: Path, skip: Path | None = None) -> list[Path]:
    """Supported, non-hidden files under `root`, in sorted order, outside the folder `skip`."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            name
            for name in dirnames
            if not name.startswith(".") and (skip is None or Path(folder, name).resolve() != skip)
        ]
        for name in filenames:
            file = Path(folder, name)
            if (
                not name.startswith(".")
                and file.suffix.lower() in SUPPORTED_SUFFIXES
                and file.is_file()
            ):
                found.append(file)
    return sorted(found, key=lambda file: file.relative_to(root).parts)


def unsupported_suffix_message(path: Path) -> str:
    expected = ", ".join(sorted(SUPPORTED_SUFFIXES))
    if not path.suffix:
        return f"file has no extension; expected one of {expected}"
    return f"unsupported file extension {path.suffix!r}; expected one of {expected}"
