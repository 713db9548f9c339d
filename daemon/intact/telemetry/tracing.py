"""Span names, span attribute keys and the tracer provider.

Span tree of one app request (OpenTelemetry GenAI semantic conventions v1.41.0, with
``gen_ai.provider.name``, never the deprecated ``gen_ai.system``)::

    POST /v1/chat/completions   SERVER  child of the app's span when it sent `traceparent`
    ├── chat {model}            CLIENT  attempt 1 (initial)
    ├── chat {model}            CLIENT  attempt 2 (retry | resume), ...

The server span is named like the HTTP route it serves (HTTP semantic conventions:
``{method} {http.route}``); the attempt spans follow the GenAI inference span convention
(``{gen_ai.operation.name} {gen_ai.request.model}``), and the upstream request carries the
attempt span's ``traceparent``. Nothing is recorded per token.
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

SERVER_SPAN_NAME: Final = "POST /v1/chat/completions"


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
