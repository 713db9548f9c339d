"""Provider push-back: how long an upstream asked us to wait before trying again.

Just this rule, as in linkerd's ``classify/retry_after.rs``. Headers are read in order of
precision: ``retry-after-ms``, ``retry-after`` (delta seconds or HTTP-date, RFC 9110 §10.2.3),
then OpenAI's ``x-ratelimit-reset-*`` durations. Capping the wait (``retry.max_retry_after``)
is the caller's decision, not this module's.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

_WANTED = frozenset(
    {
        "retry-after-ms",
        "retry-after",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
    }
)
_LIMITS = ("requests", "tokens")

# Go's time.ParseDuration grammar: an optional sign, then one or more <number><unit> parts.
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = r"(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"([+-]?)((?:{_GO_PART})+)")
_GO_PARTS = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
# Delta seconds; RFC 9110 only allows digits, but fractions and signs are seen in the wild.
_DELTA_SECONDS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("1s", "6m0s", "12ms", "1h2m3.5s"); None if malformed.

    As in Go, a bare "0" is allowed but other numbers need a unit, so a reset header that
    carries an epoch timestamp is not mistaken for a wait of decades.
    """
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    match = _GO_DURATION.fullmatch(text)
    if match is None:
        return None
    sign, body = match.groups()
    total = sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PARTS.findall(body))
    if not math.isfinite(total):
        return None
    return -total if sign == "-" else total


def _finite_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _retry_after(text: str, now: float) -> float | None:
    """``Retry-After`` as delta seconds or an HTTP-date relative to ``now``."""
    text = text.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return _finite_float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" zone: RFC 5322 says UTC with unknown origin
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp() - now
    except (OverflowError, ValueError):
        return None


def _ratelimit_reset(found: Mapping[str, str]) -> float | None:
    """The reset of whichever OpenAI rate limit is exhausted.

    A limit whose ``remaining`` is known and positive did not cause the push-back, so its
    reset is skipped; limits reported exhausted win over limits with unknown remaining.
    """
    exhausted: list[float] = []
    unknown: list[float] = []
    for limit in _LIMITS:
        raw_reset = found.get(f"x-ratelimit-reset-{limit}")
        reset = parse_duration(raw_reset) if raw_reset is not None else None
        if reset is None:
            continue
        raw_remaining = found.get(f"x-ratelimit-remaining-{limit}")
        remaining = _finite_float(raw_remaining) if raw_remaining is not None else None
        if remaining is None:
            unknown.append(reset)
        elif remaining <= 0:
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    return max(unknown) if unknown else None


def pushback_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the provider asked us to wait (>= 0), or None if no header says so usably.

    ``headers`` may be a case-insensitive multidict or a plain dict in any case; ``now`` is
    epoch seconds for HTTP-dates (default ``time.time()``). Unparseable values fall through
    to the next header.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in _WANTED and key not in found:  # first value wins, as multidict.get does
            found[key] = value
    if not found:
        return None
    seconds: float | None = None
    if "retry-after-ms" in found:
        ms = _finite_float(found["retry-after-ms"].strip())
        seconds = ms / 1000 if ms is not None else None
    if seconds is None and "retry-after" in found:
        seconds = _retry_after(found["retry-after"], time.time() if now is None else now)
    if seconds is None:
        seconds = _ratelimit_reset(found)
    return None if seconds is None else max(0.0, seconds)


__all__ = ["parse_duration", "pushback_seconds"]
