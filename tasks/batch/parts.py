"""A sharded batch job's output: each shard writes its rows to a part file, and the parent joins
the parts, in shard order (= input order, shards being row ranges), into the one output file.

The parts live in a hidden folder next to the output (`.<output name>.shards/`), so they sit on
the same filesystem as the output (a shared one when shards run on several machines) and the
join ends with an atomic rename like any other run's output.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

from tasks.batch.reading import record_format
from tasks.batch.writing import dead_letter_path
from tasks.reporting import file_mode


def parts_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.shards"


def part_path(output: Path, shard: int, shards: int) -> Path:
    """Where shard `shard` (0-based) of `shards` writes its rows."""
    return parts_dir(output) / f"{shard + 1:04d}-of-{shards:04d}{output.suffix}"


def join_parts(output: Path, shards: int) -> tuple[int, Path | None]:
    """Join every shard's part into `output` (and their dead letters into its dead-letter
    file), atomically; then remove the parts. Returns (rows written, dead-letter file or None).
    Raises FileNotFoundError when a part is missing."""
    parts = [part_path(output, shard, shards) for shard in range(shards)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shard output missing: {', '.join(missing)}")
    rows = _join(parts, output)
    dead = [d for d in (dead_letter_path(p) for p in parts) if d.is_file()]
    target = dead_letter_path(output)
    if dead:
        _join(dead, target)
    else:
        target.unlink(missing_ok=True)
    shutil.rmtree(parts_dir(output), ignore_errors=True)
    return rows, target if dead else None


def _join(parts: list[Path], output: Path) -> int:
    """Rows joined from `parts` into `output` through a temp file renamed into place."""
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(name)
    try:
        if record_format(output) == "parquet":
            rows = _join_parquet(parts, temp)
        else:
            rows = _join_text(parts, temp, header=record_format(output) == "csv")
        os.chmod(temp, file_mode())
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return rows


def _join_text(parts: list[Path], temp: Path, *, header: bool) -> int:
    """CSV (the first part's header kept, the others' dropped) or JSONL: the lines, as bytes."""
    rows = 0
    with temp.open("wb") as out:
        for index, part in enumerate(parts):
            with part.open("rb") as handle:
                if header:
                    # the header record as our writer wrote it (a column name may hold a newline)
                    first = _header_lines(part)
                    lines = [handle.readline() for _ in range(first)]
                    if index == 0:
                        out.writelines(lines)
                for line in handle:
                    out.write(line)
                    rows += 1
    return rows if not header else _csv_rows(temp)


def _header_lines(part: Path) -> int:
    with part.open(encoding="utf-8", newline="") as handle:
        columns = next(csv.reader(handle), [])
    text = io.StringIO()
    csv.writer(text).writerow(columns)
    return text.getvalue().count("\n")


def _csv_rows(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def _join_parquet(parts: list[Path], temp: Path) -> int:
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    try:
        for part in parts:
            source = pq.ParquetFile(part)
            if writer is None:
                writer = pq.ParquetWriter(temp, source.schema_arrow)
            for batch in source.iter_batches():
                writer.write_batch(batch)
                rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows
