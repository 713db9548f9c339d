"""What the relay says happened: a Telemetry decorator that counts request summaries.

The load generator sees answers from the app's side; it cannot tell a stream that was
interrupted and recovered from one that never broke. The relay can, and reports it once
per request through `Telemetry` (`RequestTrace.finish`). `RelayOutcomes` wraps whatever
telemetry the daemon runs with, forwards every call unchanged, and keeps bounded counts:
outcomes, attempts and resumes per request, interruption kinds, breaker transitions, and
the last summaries by load-generator request id (for joining with anomalies).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from intact.demo.loadgen import LOADGEN_ID_HEADER
from intact.resilience.breaker import BreakerState
from intact.telemetry.api import (
    AttemptReason,
    AttemptTrace,
    NoTelemetry,
    RequestSummary,
    RequestTrace,
    Telemetry,
    UpstreamInfo,
)


@dataclass(frozen=True)
class BreakerEvent:
    at: float
    """time.monotonic() of the transition."""
    upstream: str
    old: BreakerState
    new: BreakerState


BreakerListener = Callable[[BreakerEvent], None]


class RelayOutcomes:
    """Counts what the relay reports, and passes everything on to `inner`."""

    def __init__(
        self,
        inner: Telemetry | None = None,
        *,
        keep_summaries: int = 5_000,
        keep_breaker_events: int = 1_000,
    ) -> None:
        self.inner: Telemetry = inner if inner is not None else NoTelemetry()
        self.outcomes: Counter[str] = Counter()
        self.attempts: Counter[int] = Counter()
        """Requests by number of upstream attempts."""
        self.resumes: Counter[int] = Counter()
        self.interruptions: Counter[str] = Counter()
        """Upstream failures by kind (one request may have several)."""
        self.error_codes: Counter[str] = Counter()
        self.budget_exhausted = 0
        self.breaker_events: deque[BreakerEvent] = deque(maxlen=keep_breaker_events)
        self.breaker_listeners: list[BreakerListener] = []
        self._keep = keep_summaries
        self._summaries: OrderedDict[str, RequestSummary] = OrderedDict()

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    def summary_for(self, request_id: str) -> RequestSummary | None:
        """The relay's summary of a load-generator request, if still kept."""
        return self._summaries.get(request_id)

    def record(self, request_id: str | None, summary: RequestSummary) -> None:
        self.outcomes[summary.outcome.value] += 1
        self.attempts[summary.attempts] += 1
        self.resumes[summary.resumes] += 1
        for kind in summary.interruptions:
            self.interruptions[kind.value] += 1
        if summary.error_code:
            self.error_codes[summary.error_code] += 1
        if request_id is not None:
            self._summaries[request_id] = summary
            while len(self._summaries) > self._keep:
                self._summaries.popitem(last=False)

    # Telemetry

    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> RequestTrace:
        trace = self.inner.request(headers=headers, model=model, stream=stream, api=api)
        return _TappedRequest(self, headers.get(LOADGEN_ID_HEADER), trace)

    def breaker_transition(self, upstream: str, old: BreakerState, new: BreakerState) -> None:
        event = BreakerEvent(time.monotonic(), upstream, old, new)
        self.breaker_events.append(event)
        for listener in self.breaker_listeners:
            listener(event)
        self.inner.breaker_transition(upstream, old, new)

    def observe_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        self.inner.observe_breakers(states)


class _TappedRequest:
    """Forwards to the inner trace; records the summary on finish."""

    def __init__(
        self, outcomes: RelayOutcomes, request_id: str | None, inner: RequestTrace
    ) -> None:
        self._outcomes = outcomes
        self._request_id = request_id
        self._inner = inner

    def __enter__(self) -> _TappedRequest:
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inner.__exit__(exc_type, exc, tb)

    def attempt(
        self,
        *,
        number: int,
        reason: AttemptReason,
        upstream: UpstreamInfo,
        request_model: str,
        resume_mode: str | None,
        prefix_chars: int,
    ) -> AttemptTrace:
        return self._inner.attempt(
            number=number,
            reason=reason,
            upstream=upstream,
            request_model=request_model,
            resume_mode=resume_mode,
            prefix_chars=prefix_chars,
        )

    def budget_exhausted(self, upstream: str) -> None:
        self._outcomes.budget_exhausted += 1
        self._inner.budget_exhausted(upstream)

    def hedge(self, *, upstream: str, won: bool) -> None:
        self._inner.hedge(upstream=upstream, won=won)

    def recovered(self, *, upstream: str, seconds: float) -> None:
        self._inner.recovered(upstream=upstream, seconds=seconds)

    def finish(self, summary: RequestSummary) -> None:
        self._outcomes.record(self._request_id, summary)
        self._inner.finish(summary)


__all__ = ["BreakerEvent", "BreakerListener", "RelayOutcomes"]
