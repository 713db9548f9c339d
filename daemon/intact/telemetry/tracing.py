"""Span names, span attribute keys and the tracer provider.

Span tree of one app request (OpenTelemetry GenAI semantic conventions v1.41.0, with
``gen_ai.provider.name``, never the deprecated ``gen_ai.system``)::

    POST /v1/chat/completions   SERVER  child of the app's span when it sent `traceparent`
    ├── chat {model}            CLIENT  attempt 1 (initial)
    ├── chat {model}            CLIENT  attempt 2 (retry | resume), ...

The server span is named like the HTTP route it serves (HTTP semantic conventions:
``{method} {http.route}``): ``POST /v1/chat/completions``, ``POST /v1/responses`` or
``POST /v1/messages`` by the app-facing API (``intact.api``). The attempt spans follow the
GenAI inference span convention (``{gen_ai.operation.name} {gen_ai.request.model}``; the
operation is ``chat`` for all three APIs), and the upstream request carries the attempt
span's ``traceparent``. Nothing is recorded per token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from intact.telemetry.semconv import ROUTE_BY_API

SERVER_SPAN_NAME: Final = "POST /v1/chat/completions"
SERVER_METHOD: Final = "POST"


def server_span_name(api: str) -> str:
    """``POST {http.route}``; just the method for an API without a known route."""
    route = ROUTE_BY_API.get(api)
    return f"{SERVER_METHOD} {route}" if route else SERVER_METHOD


def use_w3c_propagation() -> None:
    """Install W3C tracecontext + baggage as the global propagator (extract and inject)."""
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )


def build_tracer_provider(
    resource: Resource, processors: Iterable[SpanProcessor]
) -> TracerProvider:
    """A private provider (never the global one), shut down by the runtime, not at exit."""
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for processor in processors:
        provider.add_span_processor(processor)
    return provider
