"""Tables as a user hands them to `gristmill batch`: the CSV files the batch tests and
benchmarks write."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_csv(
    path: Path, rows: Iterable[Sequence[object]], header: Sequence[str] = ("id", "text")
) -> Path:
    """`rows` under `header` as a UTF-8 CSV at `path`; the path."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
