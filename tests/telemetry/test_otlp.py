"""OTLP export reaches real loopback receivers (gRPC and HTTP/protobuf), and a collector that
does not answer never breaks or slows the relay, nor holds up shutdown."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from intact.simulator import SimulatedUpstream
from intact.telemetry.runtime import DEFAULT_SHUTDOWN_TIMEOUT
from telemetry.helpers import app_client, daemon_config, serving, stream_chat

pytestmark = pytest.mark.timeout(20)


@dataclass
class Received:
    """What a loopback OTLP receiver got."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)

    def spans(self) -> list[Any]:
        return [span for req in self.traces for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]  # fmt: skip

    def resource_attributes(self) -> dict[str, Any]:
        return {kv.key: value(kv.value) for req in self.traces
                for rs in req.resource_spans for kv in rs.resource.attributes}  # fmt: skip

    def metric_names(self) -> set[str]:
        return {m.name for req in self.metrics for rm in req.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics}  # fmt: skip


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def attributes(kvs: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:
        self.got.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:
        self.got.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    got = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(got), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(got), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", got
    server.stop(grace=0)


@pytest.fixture
async def http_receiver() -> AsyncIterator[tuple[str, Received]]:
    got = Received()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        got.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(
            await request.read()))  # fmt: skip
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        got.metrics.append(metrics_service_pb2.ExportMetricsServiceRequest.FromString(
            await request.read()))  # fmt: skip
        body = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", got
    await runner.cleanup()


def check_export(got: Received) -> None:
    spans = got.spans()
    assert sorted(s.name for s in spans) == [
        "POST /v1/chat/completions", "chat sim-1", "chat sim-1",
    ]  # fmt: skip
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert attributes(server.attributes)["intact.outcome"] == "recovered"
    for attempt in (s for s in spans if s.name == "chat sim-1"):
        attrs = attributes(attempt.attributes)
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attempt.trace_id == server.trace_id
        assert attempt.parent_span_id == server.span_id
    resource = got.resource_attributes()
    assert resource["service.name"] == "intact"
    assert resource["service.version"]
    expected = {"intact.streams", "intact.attempts", "intact.interruptions",
                "gen_ai.client.operation.duration", "intact.breaker.state"}  # fmt: skip
    assert expected <= got.metric_names()


async def test_otlp_grpc_export_reaches_a_collector(
    tmp_path: Path,
    sim: SimulatedUpstream,
    grpc_receiver: tuple[str, Received],  # before start_sinks: outlives the runtime's final flush
    start_sinks: Any,
) -> None:
    endpoint, got = grpc_receiver
    cfg = daemon_config(tmp_path, sim.base_url, telemetry={"otlp_endpoint": endpoint})
    sinks = start_sinks(cfg, environ={})
    sim.schedule_faults(["reset@4"])
    async with serving(cfg, sinks) as d:
        assert (await stream_chat(app_client(d.socket_path))).error is None
        # From another thread, as the periodic reader does: the breaker gauge is then read on
        # the event loop, which is free while this awaits.
        await asyncio.to_thread(sinks.runtime.force_flush)
    check_export(got)
    started = time.monotonic()
    await asyncio.to_thread(sinks.runtime.shutdown)
    assert time.monotonic() - started < 0.5  # a collector that answers: no waiting


async def test_otlp_http_protobuf_chosen_by_the_standard_variables(
    tmp_path: Path,
    sim: SimulatedUpstream,
    http_receiver: tuple[str, Received],  # before start_sinks: outlives the runtime's final flush
    start_sinks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, got = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    cfg = daemon_config(tmp_path, sim.base_url)  # otlp_protocol stays "grpc"
    sinks = start_sinks(cfg)
    sim.schedule_faults(["reset@4"])
    async with serving(cfg, sinks) as d:
        assert (await stream_chat(app_client(d.socket_path))).error is None
        await asyncio.to_thread(sinks.runtime.force_flush)  # the receiver runs on this loop
    check_export(got)
    await asyncio.to_thread(sinks.runtime.shutdown)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_collector_neither_breaks_nor_slows_the_relay(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # export spans while streams run
    cfg = daemon_config(tmp_path, sim.base_url, telemetry={
        "otlp_endpoint": f"http://127.0.0.1:{closed_port()}", "export_interval": 0.05,
    })  # fmt: skip
    sinks = start_sinks(cfg, environ={})
    async with serving(cfg, sinks) as d:
        client = app_client(d.socket_path)
        for i in range(8):
            sim.schedule_faults(["reset@4"] if i % 2 else ["none"])
            started = time.monotonic()
            got = await stream_chat(client)
            assert got.error is None
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(0.03)  # let exports to the dead collector start and fail
    assert sinks.counts("intact.streams", "outcome") == {("completed",): 4, ("recovered",): 4}

    started = time.monotonic()
    sinks.runtime.shutdown()
    assert time.monotonic() - started < DEFAULT_SHUTDOWN_TIMEOUT + 0.5
