"""Wires telemetry once at start-up: logs, the tracer and meter providers, and exporters.

``start_telemetry`` builds private providers (never the global ones, so tests can build
several), installs W3C tracecontext + baggage as the global propagator, configures logging,
and returns the ``Telemetry`` the relay records into plus the /metrics handler.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry

from intact import __version__
from intact.config import Config
from intact.telemetry.export import (
    MetricsHandler,
    metrics_handler,
    otlp_metric_exporter,
    otlp_span_exporter,
    prometheus_reader,
    prometheus_registry,
    resolve_otlp,
)
from intact.telemetry.logs import configure_logging
from intact.telemetry.otel import OtelTelemetry
from intact.telemetry.semconv import GenAiConventions
from intact.telemetry.tracing import build_tracer_provider, use_w3c_propagation

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "MetricsHandler", "TelemetryRuntime", "start_telemetry"]

log = structlog.get_logger("intact.telemetry")

SCOPE: Final = "intact"
DEFAULT_SERVICE_NAME: Final = "intact"
DEFAULT_SHUTDOWN_TIMEOUT: Final = 2.0


@dataclass(eq=False)
class TelemetryRuntime:
    """What ``start_telemetry`` built; ``shutdown`` flushes and stops it within a deadline."""

    telemetry: OtelTelemetry
    metrics_handler: MetricsHandler
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    resource: Resource
    # OTLP exporters, stopped directly if a flush to an unreachable collector overruns.
    exporters: list[SpanExporter | MetricExporter] = field(default_factory=list)
    _closed: bool = field(default=False, init=False, repr=False)

    def force_flush(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Export finished spans and current metrics now (tests, and before a planned exit)."""
        millis = int(timeout * 1000)
        self.tracer_provider.force_flush(millis)
        self.meter_provider.force_flush(millis)

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Flush and stop exporters; returns within about ``timeout`` seconds whatever the
        collector does (telemetry still unsent by then is dropped)."""
        if self._closed:
            return
        self._closed = True
        # The event loop may be blocked in this call: stop handing gauge reads to it.
        self.telemetry.breakers.detach()
        deadline = time.monotonic() + timeout
        millis = timeout * 1000
        # In parallel, so a dead metrics collector cannot starve the span flush (or back).
        stoppers = [
            _start_thread(
                "intact-metrics-shutdown",
                lambda: self.meter_provider.shutdown(timeout_millis=millis),
            ),
            _start_thread("intact-traces-shutdown", self.tracer_provider.shutdown),
        ]
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        if not any(stopper.is_alive() for stopper in stoppers):
            return
        # A collector that does not answer: cut the exporters' retries short.
        for exporter in self.exporters:
            try:
                exporter.shutdown()
            except Exception as exc:
                log.warning("otlp_exporter_shutdown_failed", detail=str(exc))
        log.warning("telemetry_shutdown_timeout", timeout_s=timeout)


def _start_thread(name: str, target: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except Exception as exc:  # e.g. a reader that ran out of time: expected, say so
            log.warning("telemetry_shutdown_incomplete", step=name, detail=str(exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _conventions_name(conventions: GenAiConventions) -> str:
    return {
        GenAiConventions.OLD: "semconv 1.41.0",
        GenAiConventions.LATEST: "semconv-genai 0.1.0",
        GenAiConventions.BOTH: "semconv 1.41.0 + semconv-genai 0.1.0",
    }[conventions]


def build_resource() -> Resource:
    """``service.name`` intact and ``service.version`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` say otherwise (plus any ``OTEL_RESOURCE_DETECTORS``)."""
    from_env = OTELResourceDetector().detect().attributes
    return Resource.create(
        {"service.name": DEFAULT_SERVICE_NAME, "service.version": __version__, **from_env}
    )


def start_telemetry(
    config: Config,
    *,
    span_exporter: SpanExporter | None = None,
    metric_readers: Sequence[MetricReader] = (),
    log_stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> TelemetryRuntime:
    """Configure logs, traces and metrics for a daemon serving ``config``.

    ``span_exporter`` (attached with a synchronous SimpleSpanProcessor) and ``metric_readers``
    are extra sinks, e.g. the SDK's in-memory ones in tests; ``log_stream`` replaces stdout;
    ``environ`` replaces ``os.environ`` when choosing OTLP endpoints and protocols, and the
    GenAI metric names (``OTEL_SEMCONV_STABILITY_OPT_IN``, read here once).
    """
    tcfg = config.telemetry
    env = os.environ if environ is None else environ
    targets = resolve_otlp(tcfg, env)  # first: a bad OTEL_* value stops start-up
    genai_conventions = GenAiConventions.from_env(env)
    configure_logging(tcfg, log_stream)
    use_w3c_propagation()
    resource = build_resource()

    exporters: list[SpanExporter | MetricExporter] = []
    processors: list[SpanProcessor] = []
    readers: list[MetricReader] = []
    registry = prometheus_registry()
    readers.append(prometheus_reader(registry))
    for target in targets:
        if target.signal == "traces":
            exporter = otlp_span_exporter(target)
            exporters.append(exporter)
            processors.append(BatchSpanProcessor(exporter))
        else:
            metric_exporter = otlp_metric_exporter(target)
            exporters.append(metric_exporter)
            readers.append(
                PeriodicExportingMetricReader(
                    metric_exporter, export_interval_millis=tcfg.export_interval * 1000
                )
            )
    if span_exporter is not None:
        processors.append(SimpleSpanProcessor(span_exporter))
    readers.extend(metric_readers)

    tracer_provider = build_tracer_provider(resource, processors)
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, shutdown_on_exit=False
    )
    telemetry = OtelTelemetry(
        tracer=tracer_provider.get_tracer(SCOPE, __version__),
        meter=meter_provider.get_meter(SCOPE, __version__),
        max_model_labels=tcfg.max_model_labels,
        apps=[app.name for app in config.apps],
        genai_conventions=genai_conventions,
    )
    telemetry.preset_upstreams((u.name, u.models) for u in config.upstreams)
    log.info(
        "telemetry_started",
        otlp=[f"{t.signal}={t.protocol}:{t.endpoint} ({t.source})" for t in targets] or None,
        service_name=resource.attributes.get("service.name"),
        log_level=tcfg.log_level,
        genai_metrics=_conventions_name(genai_conventions),
    )
    return TelemetryRuntime(
        telemetry=telemetry,
        metrics_handler=metrics_handler(registry),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        registry=registry,
        resource=resource,
        exporters=exporters,
    )
