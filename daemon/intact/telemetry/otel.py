"""The OpenTelemetry-backed ``Telemetry``: spans, metrics and one summary log line per request.

Everything here runs at request and attempt boundaries (the relay never calls in per token):
a span start/end, a few counter adds and histogram records with pre-built attribute sets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Final

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from intact.resilience.breaker import BreakerState
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.telemetry import semconv as sc
from intact.telemetry.api import (
    REQUEST_APP,
    AttemptReason,
    Outcome,
    PassthroughSummary,
    RefusalReason,
    RequestSummary,
    UpstreamInfo,
)
from intact.telemetry.metrics import (
    API_PASSTHROUGH,
    BREAKER_STATE_LABELS,
    OUTCOME,
    REASON,
    RESULT_CANCELLED,
    RESULT_INTERNAL_ERROR,
    RESULT_SUCCESS,
    STREAM_APIS,
    UPSTREAM,
    AppLabels,
    GenAiLabels,
    Instruments,
    ModelLabels,
    api_label,
)
from intact.telemetry.semconv import GenAiConventions
from intact.telemetry.tracing import SERVER_METHOD, server_span_name

log = structlog.get_logger("intact.telemetry")

# A loud line per breaker transition: opening is what pages someone.
_BREAKER_LOG: Final[Mapping[BreakerState, tuple[int, str]]] = {
    BreakerState.OPEN: (logging.ERROR, "breaker_opened"),
    BreakerState.HALF_OPEN: (logging.WARNING, "breaker_half_open"),
    BreakerState.CLOSED: (logging.INFO, "breaker_closed"),
}
# How long a metric export thread waits for the event loop to read the breaker states.
_BREAKER_READ_TIMEOUT: Final = 1.0


class BreakerStates:
    """The breaker-state gauge's source, read on the event loop that owns the breakers.

    Reading ``CircuitBreaker.state`` may move it from OPEN to HALF_OPEN (and call back into
    telemetry), and breakers are single-loop objects. Metric readers collect from their own
    threads (the OTLP periodic reader) or from the loop (the /metrics handler), so a read from
    another thread is handed to the loop; if the loop is busy or gone, the last known states
    (kept current by the transition callback) are reported instead.
    """

    def __init__(self, read_timeout: float = _BREAKER_READ_TIMEOUT) -> None:
        self._read_timeout = read_timeout
        self._source: Callable[[], Mapping[str, BreakerState]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last: dict[str, BreakerState] = {}

    def attach(self, source: Callable[[], Mapping[str, BreakerState]]) -> None:
        self._source = source
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._last = dict(source())

    def detach(self) -> None:
        """Stop reading the source (shutdown): the gauge reports the last known states."""
        self._source = None
        self._loop = None

    def note(self, upstream: str, state: BreakerState) -> None:
        self._last = {**self._last, upstream: state}

    def read(self) -> Iterable[tuple[str, BreakerState]]:
        source, loop = self._source, self._loop
        if source is not None:
            try:
                if loop is None or _running_loop() is loop:
                    self._last = dict(source())
                elif not loop.is_closed():
                    self._last = dict(_call_on_loop(loop, source, self._read_timeout))
            except Exception:  # a busy or closed loop, or a failing source: report last known
                pass
        return list(self._last.items())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _call_on_loop(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[], Mapping[str, BreakerState]],
    timeout: float,
) -> Mapping[str, BreakerState]:
    done: concurrent.futures.Future[Mapping[str, BreakerState]] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(fn())
        except Exception as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return done.result(timeout)
    finally:
        done.cancel()


class OtelTelemetry:
    """``Telemetry`` on OpenTelemetry tracer and meter instances (never the global ones)."""

    def __init__(
        self,
        *,
        tracer: Tracer,
        meter: Meter,
        max_model_labels: int,
        apps: Iterable[str] = (),
        genai_conventions: GenAiConventions = GenAiConventions.OLD,
    ) -> None:
        self.tracer = tracer
        self.breakers = BreakerStates()
        self.instruments = Instruments(meter, self.breakers.read, genai_conventions)
        self.models = ModelLabels(max_model_labels)
        self.apps = AppLabels(apps)
        for app in self.apps.names:
            self.instruments.preset_app(app)

    def preset_upstreams(self, upstreams: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Start counters at 0 for each configured upstream (and each model it is
        configured for, in each streamed API and app), so the first event of a series is not
        lost to ``rate()``."""
        ins = self.instruments
        for name, models in upstreams:
            ins.preset_upstream(name)
            for model in models:
                label = self.models.label(name, model)
                for outcome in Outcome:
                    for api in STREAM_APIS:
                        for app in self.apps.names:
                            attrs = ins.stream_labels(outcome.value, name, label, api=api, app=app)
                            ins.streams.add(0, attrs)

    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> _RequestTrace:
        app = self.apps.label(REQUEST_APP.get())
        return _RequestTrace(self, headers, model, stream, api_label(api), app)

    def app_refused(self, app: str, reason: RefusalReason) -> None:
        ins = self.instruments
        ins.app_refused.add(1, ins.app_labels(self.apps.label(app), (REASON, reason.value)))

    def passthrough_done(self, summary: PassthroughSummary) -> None:
        ins = self.instruments
        outcome = summary.outcome.value
        ins.passthrough_requests.add(
            1, ins.passthrough_labels(summary.endpoint, summary.upstream, outcome)
        )
        log.log(
            logging.WARNING if summary.outcome is Outcome.FAILED else logging.INFO,
            "request_done",
            api=API_PASSTHROUGH,
            outcome=outcome,
            method=summary.method,
            path=summary.path,
            model=summary.model,
            upstream=summary.upstream,
            attempts=summary.attempts,
            interruptions=[kind.value for kind in summary.interruptions],
            response_bytes=summary.response_bytes,
            duration_ms=round(summary.duration * 1000.0, 1),
            status=summary.status,
            error_code=summary.error_code,
        )

    def breaker_transition(self, upstream: str, old: BreakerState, new: BreakerState) -> None:
        self.breakers.note(upstream, new)
        frm, to = BREAKER_STATE_LABELS[old], BREAKER_STATE_LABELS[new]
        ins = self.instruments
        ins.breaker_transitions.add(1, ins.breaker_labels(upstream, to))
        span = trace.get_current_span()  # the attempt whose outcome tripped it, if any
        if span.is_recording():
            span.add_event(
                sc.EVENT_BREAKER_TRANSITION,
                {sc.INTACT_UPSTREAM: upstream, "from": frm, "to": to},
            )
        level, event = _BREAKER_LOG[new]
        log.log(level, event, upstream=upstream, **{"from": frm, "to": to})

    def observe_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        self.breakers.attach(states)


class _RequestTrace:
    """One app request: the SERVER span, current inside ``with``."""

    __slots__ = (
        "_active", "_api", "_app", "_app_labels", "_context", "_request_labels", "_span", "_tel",
        "_token",
    )  # fmt: skip

    def __init__(
        self,
        tel: OtelTelemetry,
        headers: Mapping[str, str],
        model: str,
        stream: bool,
        api: str,
        app: str,
    ) -> None:
        """``api`` and ``app`` are already bounded label values."""
        self._tel = tel
        parent = propagate.extract(headers)
        attributes: dict[str, AttributeValue] = {
            sc.HTTP_REQUEST_METHOD: SERVER_METHOD,
            sc.GENAI_REQUEST_MODEL: model,
            sc.GENAI_REQUEST_STREAM: stream,
            sc.INTACT_API: api,
            sc.INTACT_APP: app,
        }
        route = sc.ROUTE_BY_API.get(api)
        if route is not None:
            attributes[sc.HTTP_ROUTE] = route
        self._span = tel.tracer.start_span(
            server_span_name(api), context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._context = trace.set_span_in_context(self._span, parent)
        self._token: Token[otel_context.Context] | None = None
        self._active = True
        self._api = api
        self._app = app
        self._app_labels = tel.instruments.app_labels(app)
        self._request_labels = tel.instruments.request_labels(api, app)
        tel.instruments.active_streams.add(1, self._request_labels)
        tel.instruments.app_active_streams.add(1, self._app_labels)

    def __enter__(self) -> _RequestTrace:
        self._token = otel_context.attach(self._context)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                _record_error(self._span, exc)
            self._deactivate()
            self._span.end()
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
                self._token = None

    def _deactivate(self) -> None:
        if self._active:
            self._active = False
            self._tel.instruments.active_streams.add(-1, self._request_labels)
            self._tel.instruments.app_active_streams.add(-1, self._app_labels)

    def attempt(
        self,
        *,
        number: int,
        reason: AttemptReason,
        upstream: UpstreamInfo,
        request_model: str,
        resume_mode: str | None,
        prefix_chars: int,
    ) -> _AttemptTrace:
        return _AttemptTrace(
            self._tel,
            self._context,
            api=self._api,
            app=self._app,
            number=number,
            reason=reason,
            upstream=upstream,
            request_model=request_model,
            resume_mode=resume_mode,
            prefix_chars=prefix_chars,
        )

    def budget_exhausted(self, upstream: str) -> None:
        ins = self._tel.instruments
        ins.retry_budget_exhausted.add(1, ins.labels(UPSTREAM, upstream))
        self._span.add_event(sc.EVENT_RETRY_BUDGET_EXHAUSTED, {sc.INTACT_UPSTREAM: upstream})

    def hedge(self, *, upstream: str, won: bool) -> None:
        ins = self._tel.instruments
        result = "won" if won else "lost"
        ins.hedges.add(1, ins.hedge_labels(upstream, result))
        self._span.add_event(
            sc.EVENT_HEDGE, {sc.INTACT_UPSTREAM: upstream, "intact.hedge.won": won}
        )

    def recovered(self, *, upstream: str, seconds: float) -> None:
        ins = self._tel.instruments
        ins.recovery_duration.record(seconds, ins.upstream_labels(upstream, self._api, self._app))
        self._span.add_event(sc.EVENT_RECOVERED, {sc.INTACT_UPSTREAM: upstream, "seconds": seconds})

    def finish(self, summary: RequestSummary) -> None:
        tel = self._tel
        ins = tel.instruments
        self._deactivate()
        outcome = summary.outcome.value
        model = tel.models.label(summary.upstream, summary.model)
        served = tel.models.label(summary.upstream, summary.served_model or summary.model)
        api, app = self._api, self._app
        ins.streams.add(
            1, ins.stream_labels(outcome, summary.upstream, model, served, api=api, app=app)
        )
        ins.app_streams.add(1, ins.app_labels(app, (OUTCOME, outcome)))
        ins.stream_duration.record(
            summary.duration, ins.stream_duration_labels(outcome, summary.upstream, api, app)
        )
        kinds = [kind.value for kind in summary.interruptions]
        span = self._span
        if span.is_recording():
            attrs: dict[str, AttributeValue] = {
                sc.INTACT_OUTCOME: outcome,
                sc.INTACT_ATTEMPTS: summary.attempts,
                sc.INTACT_INTERRUPTIONS: len(kinds),
                sc.INTACT_RESUMES: summary.resumes,
                sc.INTACT_UPSTREAM: summary.upstream,
                sc.INTACT_COMPLETION_TOKENS: summary.completion_tokens,
                sc.INTACT_RECOVERED_TOKENS: summary.recovered_tokens,
                sc.GENAI_REQUEST_MODEL: summary.model,
                sc.INTACT_SERVED_MODEL: summary.served_model or summary.model,
                sc.GENAI_REQUEST_STREAM: summary.stream,
                sc.HTTP_RESPONSE_STATUS_CODE: summary.status,
            }
            if kinds:
                attrs[sc.INTACT_INTERRUPTION_KINDS] = kinds
            if summary.error_code:
                attrs[sc.INTACT_ERROR_CODE] = summary.error_code
            if summary.outcome is Outcome.FAILED:
                attrs[sc.ERROR_TYPE] = summary.error_code or _error_type(summary)
                span.set_status(Status(StatusCode.ERROR, summary.error_code))
            span.set_attributes(attrs)
        ids: dict[str, str] = {}
        if trace.get_current_span() is not span:  # called outside ``with``: name it anyway
            ctx = span.get_span_context()
            ids = {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
        log.log(
            logging.WARNING if summary.outcome is Outcome.FAILED else logging.INFO,
            "request_done",
            api=self._api,
            app=self._app,
            outcome=outcome,
            model=summary.model,
            served_model=summary.served_model or summary.model,
            upstream=summary.upstream,
            attempts=summary.attempts,
            resumes=summary.resumes,
            interruptions=kinds,
            completion_tokens=summary.completion_tokens,
            recovered_tokens=summary.recovered_tokens,
            duration_ms=round(summary.duration * 1000.0, 1),
            status=summary.status,
            error_code=summary.error_code,
            **ids,
        )


def _error_type(summary: RequestSummary) -> str:
    return summary.interruptions[-1].value if summary.interruptions else "_OTHER"


def _record_error(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class _AttemptTrace:
    """One upstream attempt: a CLIENT span under the request's span, current inside ``with``."""

    __slots__ = (
        "_api", "_app", "_context", "_done", "_first_chunk", "_genai", "_ins", "_labels",
        "_reason", "_resume", "_span", "_started", "_token", "_upstream",
    )  # fmt: skip

    def __init__(
        self,
        tel: OtelTelemetry,
        parent: otel_context.Context,
        *,
        api: str,
        app: str,
        number: int,
        reason: AttemptReason,
        upstream: UpstreamInfo,
        request_model: str,
        resume_mode: str | None,
        prefix_chars: int,
    ) -> None:
        ins = self._ins = tel.instruments
        self._api = api
        self._app = app
        self._upstream = upstream
        self._reason = reason.value
        self._resume = reason is AttemptReason.RESUME
        self._genai: GenAiLabels = (
            upstream,
            tel.models.label(upstream.name, request_model),
            api,
            app,
        )
        self._labels = ins.genai_labels(*self._genai)
        self._done = False
        self._first_chunk = False
        operation = sc.operation_name(api)
        # Set at creation: samplers may use them (GenAI semantic conventions).
        attrs: dict[str, AttributeValue] = {
            sc.GENAI_OPERATION_NAME: operation,
            sc.GENAI_PROVIDER_NAME: upstream.provider,
            sc.GENAI_REQUEST_MODEL: request_model,
            sc.GENAI_REQUEST_STREAM: True,  # intact always streams upstream
            sc.SERVER_ADDRESS: upstream.address,
            sc.SERVER_PORT: upstream.port,
            sc.INTACT_ATTEMPT: number,
            sc.INTACT_ATTEMPT_REASON: reason.value,
            sc.INTACT_UPSTREAM: upstream.name,
            sc.INTACT_API: api,
            sc.INTACT_APP: app,
        }
        if resume_mode is not None:
            attrs[sc.INTACT_RESUME_MODE] = resume_mode
            attrs[sc.INTACT_RESUME_PREFIX_CHARS] = prefix_chars
        self._span = tel.tracer.start_span(
            f"{operation} {request_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attrs,
        )
        self._context = trace.set_span_in_context(self._span, parent)
        self._token: Token[otel_context.Context] | None = None
        self._started = time.monotonic()

    def __enter__(self) -> _AttemptTrace:
        self._token = otel_context.attach(self._context)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._done:  # left without an outcome: an error inside intact itself
                self._count(RESULT_INTERNAL_ERROR)
                if exc is not None:
                    _record_error(self._span, exc)
            self._span.end()
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
                self._token = None

    def inject(self, headers: dict[str, str]) -> None:
        propagate.inject(headers, context=self._context)

    def first_chunk(self) -> None:
        if self._first_chunk:
            return
        self._first_chunk = True
        elapsed = time.monotonic() - self._started
        self._ins.record_time_to_first_chunk(elapsed, self._labels)
        span = self._span
        if span.is_recording():
            span.set_attribute(sc.GENAI_RESPONSE_TIME_TO_FIRST_CHUNK, elapsed)
            span.add_event(sc.EVENT_FIRST_CHUNK)

    def _count(self, result: str) -> None:
        self._done = True
        ins = self._ins
        ins.attempts.add(
            1, ins.attempt_labels(self._upstream.name, self._reason, result, self._api, self._app)
        )
        self._span.set_attribute(sc.INTACT_ATTEMPT_RESULT, result)

    def _delivered(self, tokens: int) -> None:
        self._span.set_attribute(sc.INTACT_DELIVERED_TOKENS, tokens)
        if self._resume and tokens:
            ins = self._ins
            ins.recovered_tokens.add(
                tokens, ins.upstream_labels(self._upstream.name, self._api, self._app)
            )

    def succeeded(
        self,
        *,
        response_id: str | None,
        response_model: str | None,
        finish_reasons: list[str],
        input_tokens: int | None,
        output_tokens: int | None,
        delivered_tokens: int,
    ) -> None:
        ins = self._ins
        self._count(RESULT_SUCCESS)
        self._delivered(delivered_tokens)
        ins.record_operation_duration(time.monotonic() - self._started, self._labels)
        if input_tokens is not None:
            ins.record_token_usage("input", input_tokens, self._genai)
        if output_tokens is not None:
            ins.record_token_usage("output", output_tokens, self._genai)
        span = self._span
        if span.is_recording():
            attrs: dict[str, AttributeValue] = {
                sc.GENAI_RESPONSE_FINISH_REASONS: finish_reasons,
            }
            if response_id is not None:
                attrs[sc.GENAI_RESPONSE_ID] = response_id
            if response_model is not None:
                attrs[sc.GENAI_RESPONSE_MODEL] = response_model
            if input_tokens is not None:
                attrs[sc.GENAI_USAGE_INPUT_TOKENS] = input_tokens
            if output_tokens is not None:
                attrs[sc.GENAI_USAGE_OUTPUT_TOKENS] = output_tokens
            span.set_attributes(attrs)

    def failed(
        self,
        failure: UpstreamFailure,
        *,
        response_id: str | None,
        response_model: str | None,
        delivered_tokens: int,
    ) -> None:
        ins = self._ins
        kind = failure.kind.value
        interruption = failure.kind is not FailureKind.HTTP_4XX  # a 4xx is a refusal
        self._count(kind)
        self._delivered(delivered_tokens)
        if interruption:
            ins.interruptions.add(
                1,
                ins.interruption_labels(failure.kind, self._upstream.name, self._api, self._app),
            )
        ins.record_operation_duration(
            time.monotonic() - self._started, ins.genai_labels(*self._genai, (sc.ERROR_TYPE, kind))
        )
        span = self._span
        if span.is_recording():
            attrs: dict[str, AttributeValue] = {sc.ERROR_TYPE: kind}
            if failure.status is not None:
                attrs[sc.HTTP_RESPONSE_STATUS_CODE] = failure.status
            if response_id is not None:
                attrs[sc.GENAI_RESPONSE_ID] = response_id
            if response_model is not None:
                attrs[sc.GENAI_RESPONSE_MODEL] = response_model
            if interruption:
                attrs[sc.INTACT_INTERRUPTION_KIND] = kind
                span.add_event(
                    sc.EVENT_INTERRUPTION,
                    {sc.EVENT_ATTR_KIND: kind, sc.EVENT_ATTR_MESSAGE: failure.message},
                )
            span.set_attributes(attrs)
            span.set_status(Status(StatusCode.ERROR, failure.message))

    def cancelled(self, *, delivered_tokens: int) -> None:
        self._count(RESULT_CANCELLED)
        self._delivered(delivered_tokens)
