"""Quota errors recognised from a message's text alone (errors.quota_retry_after), as SDKs that
keep no status attribute report them: the Antigravity SDK's harness errors, Go's genai client."""

from __future__ import annotations

import pytest

from agent_magics.errors import DEFAULT_RETRY_AFTER, quota_retry_after


class TextOnly(Exception):
    """An SDK error with nothing but its message (no status / code attribute)."""


@pytest.mark.parametrize(("text", "expected"), [
    # the harness's HTTP errors, OpenAI-style durations (Go's time.Duration format)
    ('HTTP request failed with status 429: {"error": {"message": "Rate limit reached for '
     'requests. Please try again in 6m0s.", "type": "requests"}}', 360.0),
    ("HTTP request failed with status 429: Please try again in 1m30s.", 90.0),
    ("HTTP request failed with status 429: Please try again in 2h.", 7200.0),
    ("HTTP request failed with status 429: Please try again in 1h2m3.5s.", 3723.5),
    ("HTTP request failed with status 429: Please try again in 2 minutes.", 120.0),
    # Go genai client errors: "Error <code>, Message: ..., Status: <name>, Details: [...]"
    ("Error 503, Message: The model is overloaded. Please try again later., "
     "Status: UNAVAILABLE, Details: []", DEFAULT_RETRY_AFTER),
    ("Error 429, Message: You exceeded your current quota. Please retry in 17.38s., "
     "Status: RESOURCE_EXHAUSTED, Details: []", 17.38),
    ("Please retry in 17.38s., Status: RESOURCE_EXHAUSTED", 17.38),
    ('{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}',
     DEFAULT_RETRY_AFTER),
    # what was recognised before keeps working
    ('HTTP request failed with status 429: {"error": {"message": "Please try again in 1s."}}',
     1.0),
    ('status 429 RESOURCE_EXHAUSTED {"retryDelay": "17s"}', 17.0),
    ("429 RESOURCE_EXHAUSTED. {'retryDelay': '17.5s'}", 17.5),
    ('status 429: "message": "Please try again in 1.5s"', 1.5),
    ("status 429: Rate limit reached. Please try again in 350ms.", 0.35),
    ("status 429: try again in 20.5 seconds", 20.5),
    ("status 429, Retry-After: 3", 3.0),
    ("HTTP request failed with status 503: busy", DEFAULT_RETRY_AFTER),
])
def test_quota_waits_read_from_the_text(text, expected):
    assert quota_retry_after(TextOnly(text)) == pytest.approx(expected)


@pytest.mark.parametrize("text", [
    "processed 429 rows",
    "error 503 items were lost",
    "Error 404, Message: Not found, Status: NOT_FOUND, Details: []",
    "Error 400, Message: bad request, Status: INVALID_ARGUMENT, Details: []",
    "HTTP request failed with status 400: try again in 5s",
    "the UNAVAILABLE flag is set",
    "line 503: unexpected token",
])
def test_ordinary_numbers_and_words_are_not_quota_errors(text):
    assert quota_retry_after(TextOnly(text)) is None


def test_a_word_after_the_number_is_not_a_unit():
    # "5 more minutes" is no duration; "in 3 moments" is not 3 minutes
    assert quota_retry_after(TextOnly("status 429: try again in 5 more minutes")) == \
        DEFAULT_RETRY_AFTER
    assert quota_retry_after(TextOnly("status 429: try again in 3 moments")) == \
        DEFAULT_RETRY_AFTER
