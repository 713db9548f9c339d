"""Provider push-back headers: which one wins, how each is parsed, and what is ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from intact.resilience.retry_after import parse_duration, pushback_seconds

NOW = 1_700_000_000.0


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


def test_retry_after_seconds() -> None:
    assert pushback_seconds({"retry-after": "7"}) == 7.0


def test_retry_after_fractional_seconds() -> None:
    assert pushback_seconds({"Retry-After": " 1.5 "}) == 1.5


def test_retry_after_http_date_in_the_future() -> None:
    assert pushback_seconds({"Retry-After": http_date(NOW + 30)}, now=NOW) == 30.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert pushback_seconds({"Retry-After": http_date(NOW - 30)}, now=NOW) == 0.0


def test_retry_after_http_date_defaults_to_wall_clock() -> None:
    assert pushback_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_retry_after_http_date_with_unknown_zone_is_utc() -> None:
    date = "Tue, 14 Nov 2023 22:13:50 -0000"  # NOW + 30 s
    assert pushback_seconds({"retry-after": date}, now=NOW) == 30.0


def test_negative_delta_clamps_to_zero() -> None:
    assert pushback_seconds({"retry-after": "-3"}) == 0.0
    assert pushback_seconds({"retry-after-ms": "-250"}) == 0.0


def test_retry_after_ms_takes_precedence() -> None:
    headers = {"retry-after": "9", "retry-after-ms": "1500", "x-ratelimit-reset-requests": "20s"}
    assert pushback_seconds(headers) == 1.5


def test_retry_after_takes_precedence_over_ratelimit_reset() -> None:
    assert pushback_seconds({"retry-after": "2", "x-ratelimit-reset-tokens": "20s"}) == 2.0


def test_garbage_falls_through_to_the_next_header() -> None:
    headers = {
        "retry-after-ms": "soon",
        "retry-after": "whenever you like",
        "x-ratelimit-reset-requests": "3s",
    }
    assert pushback_seconds(headers) == 3.0


@pytest.mark.parametrize("value", ["nan", "inf", "", "1e999"])
def test_non_finite_ms_is_ignored(value: str) -> None:
    assert pushback_seconds({"retry-after-ms": value}) is None


def test_nothing_usable_is_none() -> None:
    assert pushback_seconds({}) is None
    assert pushback_seconds({"content-type": "application/json"}) is None
    assert pushback_seconds({"retry-after": "later", "x-ratelimit-reset-tokens": "1 hour"}) is None


def test_plain_dict_in_any_case() -> None:
    assert pushback_seconds({"RETRY-AFTER-MS": "250"}) == 0.25
    assert pushback_seconds({"X-RateLimit-Reset-Requests": "2s"}) == 2.0


def test_case_insensitive_multidict_uses_the_first_value() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Retry-After", "4")
    headers.add("retry-after", "40")
    assert pushback_seconds(headers) == 4.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("20ms", 0.02),
        ("0", 0.0),
        ("1m30s", 90.0),
        (".5s", 0.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("10ns", 1e-8),
        ("2h", 7200.0),
        ("-1.5s", -1.5),
        (" 3s ", 3.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "60", "s", "1x", "1s2", "1 s", "1.2.3s", "--1s", "m1"])
def test_malformed_go_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_ratelimit_without_remaining_uses_the_longest_reset() -> None:
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert pushback_seconds(headers) == 360.0


def test_ratelimit_uses_the_reset_of_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-remaining-tokens": "14000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert pushback_seconds(headers) == pytest.approx(0.012)


def test_ratelimit_with_both_exhausted_uses_the_longer_reset() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "20ms",
    }
    assert pushback_seconds(headers) == 1.0


def test_ratelimit_exhausted_limit_wins_over_one_with_unknown_remaining() -> None:
    headers = {
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "2s",
        "x-ratelimit-reset-requests": "9s",
    }
    assert pushback_seconds(headers) == 2.0


def test_ratelimit_limit_with_requests_left_is_not_the_cause() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert pushback_seconds(headers) is None


def test_ratelimit_unparseable_remaining_counts_as_unknown() -> None:
    headers = {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "3s"}
    assert pushback_seconds(headers) == 3.0
