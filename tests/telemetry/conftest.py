"""Fixtures of the telemetry tests: a telemetry runtime with in-memory sinks, and a fast
simulated upstream."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from intact.config import Config
from intact.simulator import SimulatedUpstream, SimulatorSettings
from intact.telemetry.runtime import TelemetryRuntime, start_telemetry
from support import restored_logging
from telemetry.helpers import FAST_SIM, Sinks


@pytest.fixture
def start_sinks() -> Iterator[Any]:
    started: list[TelemetryRuntime] = []

    def start(config: Config, **kwargs: Any) -> Sinks:
        spans, reader, stream = InMemorySpanExporter(), InMemoryMetricReader(), io.StringIO()
        runtime = start_telemetry(config, span_exporter=spans, metric_readers=[reader],
                                  log_stream=stream, **kwargs)  # fmt: skip
        started.append(runtime)
        return Sinks(runtime, spans, reader, stream)

    yield start
    for runtime in started:
        runtime.shutdown(timeout=1.0)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedUpstream]:
    async with SimulatedUpstream(SimulatorSettings(**FAST_SIM)) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield from restored_logging()
