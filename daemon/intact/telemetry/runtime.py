"""Wires telemetry once at start-up (placeholder until the OTel backend lands)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from intact.config import Config
from intact.telemetry.api import NoTelemetry, Telemetry

MetricsHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class TelemetryRuntime:
    telemetry: Telemetry
    metrics_handler: MetricsHandler | None

    def shutdown(self) -> None:
        return None


def start_telemetry(config: Config) -> TelemetryRuntime:
    return TelemetryRuntime(telemetry=NoTelemetry(), metrics_handler=None)
