"""Error mapping: what the app is told when a request cannot be answered, in one place.

Before the commit point an error is an HTTP response (the upstream's own, when it gave one
the app can act on, such as a 429 with its Retry-After); after it, an SSE error event in
OpenAI's shape, which both official SDKs raise. A request that already produced text (even
one collected for a non-streaming app) never passes an upstream's refusal of a continuation
through as if the app had made a bad request: that is ``resume_rejected``, a failure.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from intact.errors import STREAM_INTERRUPTED, AppError, UpstreamResponseError
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.telemetry.api import Outcome

# Failure kinds that mean "too slow" rather than "broken" when every attempt is spent.
_TIMEOUT_KINDS = frozenset(
    {FailureKind.FIRST_TOKEN_TIMEOUT, FailureKind.STALL, FailureKind.DEADLINE, FailureKind.HTTP_408}
)

Ending = AppError | UpstreamResponseError


def give_up(
    code: str,
    message: str,
    *,
    last: UpstreamFailure | None,
    committed: bool,
    status: int | None = None,
    retry_after: float | None = None,
) -> Ending:
    """Out of attempts, budget, time or upstreams."""
    if last is not None:
        message = f"{message}; last failure: {last.message}"
    if committed:
        return AppError(status=502, message=message, type=STREAM_INTERRUPTED, code=code)
    if last is not None and last.status is not None and status is None:
        return passable(last)  # e.g. a 429 with its Retry-After
    if status is None:
        timed_out = (
            last is not None and last.kind in _TIMEOUT_KINDS
        ) or code == "deadline_exceeded"
        status = 504 if timed_out else 502
    headers = (
        {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else {}
    )
    return AppError(
        status=status,
        message=message,
        type=(
            "upstream_unavailable"
            if status == 503
            else "rate_limit_exceeded"
            if status == 429
            else "upstream_error"
        ),
        code=code,
        headers=headers,
    )


def final_error(
    failure: UpstreamFailure, *, committed: bool, started: bool
) -> tuple[Ending, Outcome]:
    """A non-retryable failure. ``started``: the app has (or the collector holds) part of
    an answer, so this failure refused a continuation."""
    if started:
        # The stream broke and the upstream refused to continue it (e.g. no prefill).
        return (
            AppError(
                status=502,
                message=failure.message,
                type=STREAM_INTERRUPTED,
                code="resume_rejected",
            ),
            Outcome.FAILED,
        )
    if not committed and failure.status is not None:
        outcome = Outcome.REJECTED if failure.status < 500 else Outcome.FAILED
        return passable(failure), outcome
    error = AppError(
        status=502, message=failure.message, type="upstream_error", code=failure.kind.value
    )
    return error, Outcome.FAILED


def abrupt(status: int, code: str, message: str, http_type: str, *, committed: bool) -> AppError:
    """A request the relay loop could not finish (a bug, the drain deadline)."""
    return AppError(
        status=status,
        message=message,
        type=STREAM_INTERRUPTED if committed else http_type,
        code=code,
        headers={"Retry-After": "1"} if status == 503 and not committed else {},
    )


def client_too_slow(timeout: float) -> AppError:
    return AppError(
        status=408,
        message=(
            f"the app did not read its stream for {timeout:g}s (server.app_write_timeout) "
            "while intact's buffer for it was full; the stream was ended"
        ),
        type=STREAM_INTERRUPTED,
        code="client_too_slow",
    )


def passable(failure: UpstreamFailure) -> UpstreamResponseError:
    """The upstream's own error response, made safe to hand to the app."""
    body = failure.body
    try:
        payload: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if not (isinstance(payload, dict) and "error" in payload):
        text = body.decode("utf-8", "replace")[:500] if body else failure.message
        body = AppError(
            status=failure.status or 502,
            message=text,
            type="upstream_error",
            code=failure.kind.value,
        ).body()
    keep = {
        k: v
        for k, v in failure.headers.items()
        if k.lower() in ("retry-after", "retry-after-ms", "x-request-id")
        or k.lower().startswith("x-ratelimit-")
    }
    return UpstreamResponseError(status=failure.status or 502, body=body, headers=keep)
