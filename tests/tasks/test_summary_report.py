"""The summarise report artifact as a reader sees it: short cells, details below the table."""

from __future__ import annotations

from tasks.llm import Usage
from tasks.quality import QualityReport
from tasks.reporting import ItemOutcome, SummarizeReport, summarize_report_markdown

PASSED = ["utterances: passed (6 checks on 484 rows)", "chunks: passed (7 checks on 10 rows)"]


def report_of(*outcomes: ItemOutcome) -> SummarizeReport:
    return SummarizeReport(
        transcripts=list(outcomes), engine="e", model="m", llm_calls=0, usage=Usage(), duration_s=1
    )


def table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_the_verdict_is_a_few_words_from_the_suites_lines() -> None:
    assert QualityReport.verdict(PASSED) == "passed"
    assert QualityReport.verdict(
        [*PASSED, "summaries: passed (7 checks on 1 rows, 2 warnings)"]
    ) == ("passed, 2 warnings")
    assert QualityReport.verdict(["utterances: FAILED (6 checks on 3 rows)", *PASSED]) == (
        "failed: utterances"
    )
    assert QualityReport.verdict([]) == "-"
    real = QualityReport(suite="chunks", rows=3, success=False, evaluated=4).summary_line()
    assert QualityReport.verdict([real]) == "failed: chunks"  # the format it reads is its own


def test_paths_are_shown_under_their_folders_and_the_checks_below_the_table() -> None:
    long_out = "/srv/a-rather-long-folder-name/for-the-summaries-of-this-quarter"
    markdown = summarize_report_markdown(
        report_of(
            ItemOutcome(
                source="/data/in/standup.txt",
                status="ok",
                output=f"{long_out}/standup.json",
                quality=PASSED,
                warnings=["2 cues without timestamps kept by line"],
            ),
            ItemOutcome(source="/data/in/q3/empty.txt", status="failed", error="file is empty"),
        )
    )
    header, _, ok, failed = table_rows(markdown)
    assert header[:3] == ["Transcript", "Status", "Data quality"]  # visible in any window
    assert ok == ["standup.txt", "ok", "passed", "0", "0", "0.0000", "standup.json", "1"]
    assert failed[:3] == ["q3/empty.txt", "failed", "-"] and "file is empty" in failed
    assert "Transcripts from `/data/in`" in markdown
    assert f"Summaries written to `{long_out}`" in markdown
    assert "- **standup.txt**: " + "; ".join(PASSED) in markdown
    assert "2 cues without timestamps kept by line" in markdown.split("## Data-quality")[1]
