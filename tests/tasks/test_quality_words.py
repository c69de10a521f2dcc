"""Data-quality verdicts in words a reader knows, not great-expectations' names (issue 10)."""

from __future__ import annotations

import inspect

import pandas as pd

import tasks.quality as quality
from tasks.quality import ExpectationOutcome, utterance_expectations, validate_table


def test_a_long_utterance_is_reported_in_words() -> None:
    frame = pd.DataFrame(
        {"index": [0, 1, 2], "speaker": ["Ann", "Bob", None], "text": ["hi", "x" * 20_001, ""]}
    )
    report = validate_table(frame, "utterances", utterance_expectations())
    assert not report.success
    assert report.reason() == "data quality (utterances): empty utterances: 1"
    assert [w.describe().split(", e.g.")[0] for w in report.warnings] == [
        "utterances longer than 20,000 characters: 1"
    ]
    assert "expect_" not in report.reason() + "".join(w.describe() for w in report.warnings)


def test_every_built_in_expectation_says_what_it_found_in_words() -> None:
    suites = {
        name: function
        for name, function in inspect.getmembers(quality, inspect.isfunction)
        if name.endswith("_expectations") and function.__module__ == quality.__name__
    }
    assert len(suites) >= 9
    for name, function in suites.items():
        arguments = {
            "max_tokens": 512,
            "utterance_count": 3,
            "required_columns": ["text"],
            "min_chars": 1,
            "max_chars": 100,
            "input_rows": 3,
            "statuses": ["ok"],
        }
        wanted = inspect.signature(function).parameters
        expectations = function(**{k: v for k, v in arguments.items() if k in wanted})
        for expectation in expectations:
            assert expectation.description, (name, type(expectation).__name__)


def test_a_users_own_expectation_keeps_its_name() -> None:
    outcome = ExpectationOutcome(
        expectation="expect_column_values_to_be_in_set",
        column="lang",
        severity="critical",
        success=False,
        unexpected_count=2,
    )
    assert outcome.describe() == "lang: expect_column_values_to_be_in_set, 2 bad rows"
