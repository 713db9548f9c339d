"""Failure classification, in one place: is it retryable, does it count against the upstream's
health, and what kind of interruption was it.

The rules (Envoy, gRPC, openai-python agree on the shape):
- connect errors, resets, timeouts, 408/429/5xx/529 and overload/server error events are
  retryable; other 4xx are final and go back to the app unchanged;
- 429 drives backoff and the retry budget but is not a breaker failure: the provider is
  healthy, just rate limiting; final 4xx never touch the upstream's health either;
- an app that disconnects is neither a success nor a failure (handled by the caller).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from intact.resilience.retry_after import pushback_seconds


class FailureKind(enum.StrEnum):
    """Bounded label values for interruption metrics and span attributes."""

    CONNECT_ERROR = "connect_error"
    RESET = "reset"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    STALL = "stall"
    ERROR_EVENT = "error_event"
    TRUNCATED = "truncated"
    PROTOCOL_ERROR = "protocol_error"
    HTTP_408 = "http_408"
    HTTP_429 = "http_429"
    HTTP_5XX = "http_5xx"
    HTTP_4XX = "http_4xx"
    DIVERGED = "diverged"
    DEADLINE = "deadline"


RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})

# SSE error-event types/codes that mean "the provider is overloaded or broke": retry.
_SERVER_ERROR_WORDS = (
    "server_error",
    "overloaded",
    "internal",
    "unavailable",
    "timeout",
    "api_error",
    "bad_gateway",
)
_RATE_LIMIT_WORDS = ("rate_limit", "insufficient_quota_retry", "too_many_requests")


class UpstreamFailure(Exception):
    """Why one upstream attempt did not complete; safe to log (never holds the API key)."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        retryable: bool,
        breaker_failure: bool,
        status: int | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        pushback: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.breaker_failure = breaker_failure
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = headers or {}
        self.pushback = pushback

    def __repr__(self) -> str:
        return f"UpstreamFailure({self.kind.value}, {self.message!r}, status={self.status})"


def _error_detail(body: bytes) -> str:
    """The provider's own error message, for logs and in-band errors (bounded)."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return ""
    err = payload.get("error") if isinstance(payload, dict) else None
    message = err.get("message") if isinstance(err, dict) else err
    return f": {str(message)[:300]}" if message else ""


def from_status(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
    """Classify a non-200 HTTP response received before any stream byte."""
    pushback = pushback_seconds(headers)
    if status == 429:
        return UpstreamFailure(
            FailureKind.HTTP_429,
            f"upstream rate limited (HTTP {status})",
            retryable=True,
            breaker_failure=False,
            status=status,
            body=body,
            headers=headers,
            pushback=pushback,
        )
    if status == 408:
        return UpstreamFailure(
            FailureKind.HTTP_408,
            "upstream request timeout (HTTP 408)",
            retryable=True,
            breaker_failure=True,
            status=status,
            body=body,
            headers=headers,
            pushback=pushback,
        )
    if status >= 500:
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return UpstreamFailure(
            FailureKind.HTTP_5XX,
            f"upstream server error (HTTP {status})",
            retryable=retryable,
            breaker_failure=True,
            status=status,
            body=body,
            headers=headers,
            pushback=pushback,
        )
    return UpstreamFailure(
        FailureKind.HTTP_4XX,
        f"upstream rejected the request (HTTP {status}){_error_detail(body)}",
        retryable=False,
        breaker_failure=False,
        status=status,
        body=body,
        headers=headers,
    )


def from_error_event(payload: Mapping[str, Any]) -> UpstreamFailure:
    """Classify an SSE ``{"error": {...}}`` event received mid-stream."""
    err = payload.get("error")
    fields: Mapping[str, Any] = err if isinstance(err, Mapping) else {"message": str(err)}
    words = " ".join(str(fields.get(k) or "") for k in ("type", "code", "status")).lower()
    message = str(fields.get("message") or "upstream sent an error event")[:300]
    if any(w in words for w in _RATE_LIMIT_WORDS):
        return UpstreamFailure(
            FailureKind.ERROR_EVENT,
            f"upstream error event: {message}",
            retryable=True,
            breaker_failure=False,
        )
    final_words = (
        "invalid_",  # invalid_request(_error), OpenAI Responses' invalid_prompt, invalid_image...
        "context_length",
        "content_filter",
        "policy",  # content_policy_violation, image_content_policy_violation
        "authentication",
        "permission",
        "not_found",
    )
    if any(w in words for w in final_words):
        return UpstreamFailure(
            FailureKind.ERROR_EVENT,
            f"upstream error event: {message}",
            retryable=False,
            breaker_failure=False,
        )
    # Server errors, overloads and anything unrecognised: the stream broke on their side.
    return UpstreamFailure(
        FailureKind.ERROR_EVENT,
        f"upstream error event: {message}",
        retryable=True,
        breaker_failure=True,
    )


def from_exception(exc: BaseException, *, before_response: bool) -> UpstreamFailure:
    """Classify a transport exception from aiohttp while connecting or reading."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(
            FailureKind.CONNECT_ERROR,
            f"cannot connect to upstream: {type(exc).__name__}",
            retryable=True,
            breaker_failure=True,
        )
    if before_response:
        return UpstreamFailure(
            FailureKind.RESET,
            f"upstream closed the connection before responding ({type(exc).__name__})",
            retryable=True,
            breaker_failure=True,
        )
    return UpstreamFailure(
        FailureKind.RESET,
        f"upstream connection broke mid-stream ({type(exc).__name__})",
        retryable=True,
        breaker_failure=True,
    )


def timeout_failure(kind: FailureKind, seconds: float) -> UpstreamFailure:
    what = {
        FailureKind.FIRST_TOKEN_TIMEOUT: f"no first event within {seconds:g}s",
        FailureKind.STALL: f"no event for {seconds:g}s mid-stream",
        FailureKind.DEADLINE: f"request deadline of {seconds:g}s reached",
    }[kind]
    return UpstreamFailure(
        kind,
        what,
        retryable=kind is not FailureKind.DEADLINE,
        breaker_failure=kind is not FailureKind.DEADLINE,
    )


def truncated() -> UpstreamFailure:
    return UpstreamFailure(
        FailureKind.TRUNCATED,
        "upstream ended the stream without finish_reason",
        retryable=True,
        breaker_failure=True,
    )


def protocol_error(detail: str) -> UpstreamFailure:
    return UpstreamFailure(
        FailureKind.PROTOCOL_ERROR,
        f"malformed upstream stream: {detail}",
        retryable=True,
        breaker_failure=True,
    )


def diverged(detail: str) -> UpstreamFailure:
    # The upstream answered, but with text that cannot be spliced onto what the app has;
    # another resume may fit. Not the upstream's health problem.
    return UpstreamFailure(
        FailureKind.DIVERGED,
        f"continuation diverged: {detail}",
        retryable=True,
        breaker_failure=False,
    )


_CONTEXT_WORDS = (
    "context_length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",  # Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"
)
_POLICY_WORDS = ("content_filter", "content_policy", "content policy", "safety")


def refusal_reason(failure: UpstreamFailure) -> str | None:
    """'context_length' or 'content_policy' when a final 4xx says the prompt is too long for
    the model or was refused for its content (what a fallback model may still answer)."""
    if failure.retryable or failure.status is None or not 400 <= failure.status < 500:
        return None
    try:
        payload = orjson.loads(failure.body) if failure.body else None
    except orjson.JSONDecodeError:
        payload = None
    err = payload.get("error") if isinstance(payload, dict) else None
    fields = err if isinstance(err, dict) else {"message": str(err or "")}
    text = " ".join(str(fields.get(k) or "") for k in ("code", "type", "message")).lower()
    if any(w in text for w in _CONTEXT_WORDS):
        return "context_length"
    if any(w in text for w in _POLICY_WORDS):
        return "content_policy"
    return None
