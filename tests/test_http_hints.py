"""Reading how long a provider says to wait (runtimes/_http.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from agent_magics.runtimes._http import (
    parse_duration,
    retry_after_from_body,
    retry_after_from_headers,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1.5", 1.5), ("17s", 17.0), ("1h2m", 3720.0),
    ("0.5s", 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1 day", "s"])
def test_parse_duration_rejects_other_text(text):
    assert parse_duration(text) is None


def test_retry_after_header_forms():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after_from_headers({"retry-after": "3"}) == 3.0
    assert retry_after_from_headers({"retry-after": date}, now=now) == pytest.approx(42.0)
    assert retry_after_from_headers({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_from_headers({"x-ratelimit-reset-tokens": "6m0s"}) == 360.0
    # a direct Retry-After wins over the reset headers; the largest direct hint wins
    assert retry_after_from_headers({"retry-after": "2", "x-ratelimit-reset-requests": "9s"}) \
        == 2.0
    assert retry_after_from_headers({"retry-after": "2", "retry-after-ms": "4000"}) == 4.0
    assert retry_after_from_headers({"retry-after": "garbage"}) is None
    assert retry_after_from_headers({}) is None
    assert retry_after_from_headers(None) is None


def test_gemini_retry_info_in_the_error_body():
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}
    assert retry_after_from_body(body) == 17.0
    assert retry_after_from_body({"error": {"message": "no hint"}}) is None
    assert retry_after_from_body([{"retryDelay": "250ms"}]) == 0.25
