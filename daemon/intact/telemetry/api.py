"""The narrow interface through which the relay records facts; telemetry backends implement it.

The relay calls these at request and attempt boundaries only (never per token), so the hot
path stays free of span events, string formatting and metric lookups.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, runtime_checkable

from intact.config import OTHER_APP
from intact.resilience.breaker import BreakerState
from intact.resilience.classify import FailureKind, UpstreamFailure


class Outcome(enum.StrEnum):
    """How an app request ended (label values of ``intact_streams_total``)."""

    COMPLETED = "completed"  # no interruption
    RECOVERED = "recovered"  # interrupted, delivered whole
    FAILED = "failed"  # ended with an explicit error after interruptions or outages
    REJECTED = "rejected"  # the upstream refused the request (4xx passed through)
    CANCELLED = "cancelled"  # the app went away


class Api(enum.StrEnum):
    """The app-facing API a request came in on (the bounded ``api`` label and ``intact.api``).

    The relay passes the string values; telemetry records anything else as ``"other"``.
    """

    CHAT = "chat"  # OpenAI Chat Completions, POST /v1/chat/completions
    RESPONSES = "responses"  # OpenAI Responses, POST /v1/responses
    MESSAGES = "messages"  # Anthropic Messages, POST /v1/messages
    PASSTHROUGH = "passthrough"  # any other /v1/ route, relayed without being read


class RefusalReason(enum.StrEnum):
    """Why intact turned an app away before relaying (label values of
    ``intact_app_refused_total``)."""

    FORBIDDEN = "forbidden"  # the peer's uid/gid is not allowed (403)
    STREAM_LIMIT = "stream_limit"  # the app's max_concurrent_streams is reached (429)
    CONNECTION_LIMIT = "connection_limit"  # the peer has max_connections_per_peer open (429)
    READ_TIMEOUT = "read_timeout"  # the request did not arrive within request_read_timeout


# The app (an [[apps]] name or "other") the current request is served as. The app-side
# listener sets it around ``Relay.serve``; telemetry reads it when the request starts, so
# the relay and every Telemetry wrapper pass it on without knowing of it.
REQUEST_APP: ContextVar[str] = ContextVar("intact_request_app", default=OTHER_APP)


class AttemptReason(enum.StrEnum):
    INITIAL = "initial"
    RETRY = "retry"  # nothing had reached the app yet
    RESUME = "resume"  # continuing a partial answer
    HEDGE = "hedge"  # the same request on a second upstream while the first is slow


@dataclass(frozen=True, slots=True)
class UpstreamInfo:
    """Static facts about an upstream used as telemetry attributes."""

    name: str
    provider: str
    address: str
    port: int


@dataclass(slots=True)
class RequestSummary:
    """One line per app request: the facts an SRE needs without reading code."""

    outcome: Outcome
    model: str
    stream: bool
    upstream: str
    attempts: int
    resumes: int
    interruptions: list[FailureKind] = field(default_factory=list)
    completion_tokens: int = 0
    recovered_tokens: int = 0
    duration: float = 0.0
    status: int = 200
    error_code: str | None = None
    served_model: str | None = None  # the model that answered (a route may rewrite it)
    api: str = "chat"  # the app-facing API (an ``Api`` value)


@dataclass(slots=True)
class PassthroughSummary:
    """One pass-through request (a /v1/ route intact relays without reading it)."""

    method: str
    path: str
    endpoint: str  # bounded: the route's first segment (embeddings, audio, ...) or "other"
    upstream: str
    model: str | None
    outcome: Outcome
    attempts: int
    status: int
    interruptions: list[FailureKind] = field(default_factory=list)
    duration: float = 0.0
    response_bytes: int = 0
    error_code: str | None = None


class AttemptTrace(Protocol):
    def __enter__(self) -> AttemptTrace: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def inject(self, headers: dict[str, str]) -> None:
        """Add trace propagation headers (traceparent) for the upstream request."""

    def first_chunk(self) -> None: ...

    def succeeded(
        self,
        *,
        response_id: str | None,
        response_model: str | None,
        finish_reasons: list[str],
        input_tokens: int | None,
        output_tokens: int | None,
        delivered_tokens: int,
    ) -> None: ...

    def failed(
        self,
        failure: UpstreamFailure,
        *,
        response_id: str | None,
        response_model: str | None,
        delivered_tokens: int,
    ) -> None: ...

    def cancelled(self, *, delivered_tokens: int) -> None: ...


class RequestTrace(Protocol):
    def __enter__(self) -> RequestTrace: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def attempt(
        self,
        *,
        number: int,
        reason: AttemptReason,
        upstream: UpstreamInfo,
        request_model: str,
        resume_mode: str | None,
        prefix_chars: int,
    ) -> AttemptTrace: ...

    def budget_exhausted(self, upstream: str) -> None: ...

    def hedge(self, *, upstream: str, won: bool) -> None:
        """A hedged attempt to ``upstream`` ended the race: first to answer, or not."""

    def recovered(self, *, upstream: str, seconds: float) -> None:
        """Interruption detected -> first continuation content delivered."""

    def finish(self, summary: RequestSummary) -> None: ...


class Telemetry(Protocol):
    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> RequestTrace:
        """One app request on ``api`` (an ``Api`` value); labels are fixed here, once."""
        ...

    def breaker_transition(self, upstream: str, old: BreakerState, new: BreakerState) -> None: ...

    def observe_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        """Register a callback read at export time for the breaker-state gauge."""


@runtime_checkable
class AppTelemetry(Protocol):
    """Telemetry that also records what the app-side listener refuses."""

    def app_refused(self, app: str, reason: RefusalReason) -> None: ...


@runtime_checkable
class PassthroughTelemetry(Protocol):
    """Telemetry that also records pass-through requests."""

    def passthrough_done(self, summary: PassthroughSummary) -> None: ...


class _NoAttempt:
    def __enter__(self) -> _NoAttempt:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def inject(self, headers: dict[str, str]) -> None:
        return None

    def first_chunk(self) -> None:
        return None

    def succeeded(self, **_: object) -> None:
        return None

    def failed(self, failure: UpstreamFailure, **_: object) -> None:
        return None

    def cancelled(self, **_: object) -> None:
        return None


class _NoRequest:
    def __enter__(self) -> _NoRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def attempt(self, **_: object) -> AttemptTrace:
        return _NoAttempt()

    def budget_exhausted(self, upstream: str) -> None:
        return None

    def hedge(self, *, upstream: str, won: bool) -> None:
        return None

    def recovered(self, **_: object) -> None:
        return None

    def finish(self, summary: RequestSummary) -> None:
        return None


class NoTelemetry:
    """Records nothing; for unit tests of the relay and for embedding."""

    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> RequestTrace:
        return _NoRequest()

    def breaker_transition(self, upstream: str, old: BreakerState, new: BreakerState) -> None:
        return None

    def observe_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        return None
