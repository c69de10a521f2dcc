"""Why files were left out, remembered per source with its hash and the settings (the
store's `LeftOutLedger`), so an unchanged left-out file costs only a hash next time and is
reported again with the same verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tasks.ingestion.report import QuarantineRecord, SkipRecord
from tasks.vectorstore import LeftOut, LeftOutLedger

# Bump when what makes a document skipped or quarantined changes (the quality suites, a
# loader's verdicts), so the verdicts remembered for unchanged files are made again.
# 2: `.mdx` is read (a file named on the command line was quarantined as an unsupported type).
LEFT_OUT_VERSION = 2


def left_out_key(chunking: str, max_bytes: int) -> str:
    """What a skip or quarantine verdict depends on besides the file's bytes."""
    return f"{chunking} max_bytes={max_bytes} verdicts=v{LEFT_OUT_VERSION}"


def remembered(
    left_out: Mapping[str, LeftOut], hashes: Mapping[str, str | None], key: str
) -> tuple[list[SkipRecord], list[QuarantineRecord]]:
    """The verdicts in `left_out` made for exactly these bytes (`hashes`) and settings."""
    skipped: list[SkipRecord] = []
    quarantine: list[QuarantineRecord] = []
    for source, record in left_out.items():
        if record.key != key or record.document_hash != hashes.get(source):
            continue
        if record.status == "skipped":
            skipped.append(SkipRecord(source=source, reason=record.reason))
        else:
            quarantine.append(
                QuarantineRecord(
                    source=source,
                    reason=record.reason,
                    failed_expectations=record.failed_expectations,
                )
            )
    return skipped, quarantine


def remember_verdicts(
    ledger: LeftOutLedger,
    hashes: Mapping[str, str | None],
    key: str,
    records: Sequence[SkipRecord | QuarantineRecord],
    forget: Sequence[str] = (),
) -> None:
    """Remember why files were left out (those with a hash: readable, within the size limit),
    and forget the records of files now written."""
    remember = [
        LeftOut(
            source=record.source,
            document_hash=document_hash,
            key=key,
            status="skipped" if isinstance(record, SkipRecord) else "quarantined",
            reason=record.reason,
            failed_expectations=getattr(record, "failed_expectations", []),
        )
        for record in records
        if (document_hash := hashes.get(record.source)) and remembers(record)
    ]
    if remember:
        ledger.remember(remember)
    if forget:
        ledger.forget(forget)


def remembers(record: SkipRecord | QuarantineRecord) -> bool:
    """False for a verdict that may not hold next time with the same bytes: a parser's crash
    (a bug a release may fix without bumping LEFT_OUT_VERSION)."""
    return not (isinstance(record, QuarantineRecord) and record.unexpected)
