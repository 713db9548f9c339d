"""Where telemetry goes: the admin listener's /metrics (Prometheus) and OTLP collectors.

OTLP is on when ``telemetry.otlp_endpoint`` is set, or the standard variables name an
endpoint: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base; ``/v1/traces`` and ``/v1/metrics`` are
appended for HTTP) or ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`` (used as given).
``telemetry.otlp_endpoint``, when set, is a base endpoint for both signals and wins over
the variables. The protocol is ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``, else
``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``telemetry.otlp_protocol``. ``OTEL_SDK_DISABLED=true``
and ``OTEL_{TRACES,METRICS}_EXPORTER=none`` turn OTLP export off. Headers, timeout,
compression and TLS come from the usual ``OTEL_EXPORTER_OTLP_*`` variables, read by the
exporters themselves.

Exporters run on their own threads (batch span processor, periodic metric reader), so a slow
or unreachable collector costs the relay nothing but dropped telemetry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from intact.config import ConfigError, TelemetryConfig

MetricsHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Signal = Literal["traces", "metrics"]
Protocol = Literal["grpc", "http/protobuf"]

SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics")
PROTOCOLS: Final[tuple[Protocol, ...]] = ("grpc", "http/protobuf")
_HTTP_PATHS: Final[Mapping[Signal, str]] = {"traces": "/v1/traces", "metrics": "/v1/metrics"}


@dataclass(frozen=True)
class OtlpTarget:
    """One signal's OTLP destination, fully resolved."""

    signal: Signal
    protocol: Protocol
    endpoint: str  # passed to the exporter as is
    source: str  # the setting that named it, for the start-up log


def _protocol(value: str, setting: str) -> Protocol:
    value = value.strip()
    for allowed in PROTOCOLS:
        if value == allowed:
            return allowed
    raise ConfigError(
        f"{setting} = {value!r} is not allowed: expected one of 'grpc', 'http/protobuf'"
    )


def _from_base(base: str, signal: Signal, protocol: Protocol) -> str:
    return base if protocol == "grpc" else base.rstrip("/") + _HTTP_PATHS[signal]


def resolve_otlp(config: TelemetryConfig, environ: Mapping[str, str]) -> list[OtlpTarget]:
    """The OTLP destinations named by config and ``OTEL_*`` variables (none: no export)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    targets: list[OtlpTarget] = []
    for signal in SIGNALS:
        upper = signal.upper()
        if environ.get(f"OTEL_{upper}_EXPORTER", "").strip().lower() == "none":
            continue
        protocol = _protocol(config.otlp_protocol, "telemetry.otlp_protocol")
        for var in (f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            if environ.get(var, "").strip():
                protocol = _protocol(environ[var], var)
                break
        signal_var = f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"
        if config.otlp_endpoint:
            endpoint = _from_base(config.otlp_endpoint, signal, protocol)
            source = "telemetry.otlp_endpoint"
        elif environ.get(signal_var, "").strip():
            endpoint, source = environ[signal_var].strip(), signal_var
        elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            base = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
            endpoint = _from_base(base, signal, protocol)
            source = "OTEL_EXPORTER_OTLP_ENDPOINT"
        else:
            continue
        targets.append(OtlpTarget(signal, protocol, endpoint, source))
    return targets


def otlp_span_exporter(target: OtlpTarget) -> SpanExporter:
    exporter: SpanExporter
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        exporter = GrpcSpanExporter(endpoint=target.endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporter = HttpSpanExporter(endpoint=target.endpoint)
    return exporter


def otlp_metric_exporter(target: OtlpTarget) -> MetricExporter:
    exporter: MetricExporter
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        exporter = GrpcMetricExporter(endpoint=target.endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        exporter = HttpMetricExporter(endpoint=target.endpoint)
    return exporter


def prometheus_registry() -> CollectorRegistry:
    """A private registry (tests build several) with the standard process collectors:
    ``process_*`` (CPU, memory, file descriptors), ``python_info`` and ``python_gc_*``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def prometheus_reader(registry: CollectorRegistry) -> PrometheusMetricReader:
    # One instrumentation scope only, so otel_scope_* labels would say nothing.
    return PrometheusMetricReader(scope_info_enabled=False, registry=registry)


def metrics_handler(registry: CollectorRegistry) -> MetricsHandler:
    """GET /metrics: text or OpenMetrics by the Accept header, gzip by aiohttp."""
    return make_aiohttp_handler(registry)
