"""Helpers of the telemetry tests: a fast daemon config, the openai SDK over the Unix socket,
what the app received, and readers for in-memory metrics and scraped /metrics."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from intact.config import Config, build_config, merge_tables
from intact.daemon import RunningDaemon, running_daemon
from intact.telemetry.runtime import TelemetryRuntime

MESSAGES: Any = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
FAST_SIM: dict[str, Any] = {"tok_per_s": 0.0, "ttft": 0.0, "repeat_prob": 0.0, "seed": 3}


def daemon_config(tmp_path: Path, base_url: str, **over: Any) -> Config:
    raw: dict[str, Any] = {
        "server": {"socket": str(tmp_path / "i.sock"), "metrics_addr": "127.0.0.1:0",
                   "drain_timeout": 1.0},
        "retry": {"base_delay": 0.01, "max_delay": 0.02, "budget_min_per_second": 100.0},
        "stream": {"stall_timeout": 0.3, "first_token_timeout": 1.0, "connect_timeout": 1.0},
        "telemetry": {"log_format": "json"},
        "upstreams": [{"name": "sim", "base_url": base_url, "resume": "prefill"}],
    }  # fmt: skip
    return build_config(merge_tables(raw, over))


@dataclass
class Sinks:
    """A started telemetry runtime and the in-memory places its output lands in."""

    runtime: TelemetryRuntime
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    log_stream: io.StringIO

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines() if line]

    def metric(self, name: str) -> list[tuple[dict[str, Any], float]]:
        """(attributes, value) per point; a histogram's value is its count."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], float]] = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != name:
                        continue
                    if isinstance(m.data, Histogram):
                        found += [(dict(p.attributes or {}), float(p.count))
                                  for p in m.data.data_points]  # fmt: skip
                    elif isinstance(m.data, Sum | Gauge):
                        found += [(dict(p.attributes or {}), float(p.value))
                                  for p in m.data.data_points]  # fmt: skip
        return found

    def counts(self, name: str, *keys: str) -> dict[tuple[Any, ...], float]:
        """Non-zero values of a metric summed by the given attribute keys."""
        out: dict[tuple[Any, ...], float] = {}
        for attrs, value in self.metric(name):
            key = tuple(attrs.get(k) for k in keys)
            out[key] = out.get(key, 0.0) + value
        return {k: v for k, v in out.items() if v}


@contextlib.asynccontextmanager
async def serving(config: Config, sinks: Sinks) -> AsyncIterator[RunningDaemon]:
    rt = sinks.runtime
    async with running_daemon(config, telemetry=rt.telemetry,
                              metrics_handler=rt.metrics_handler) as daemon:  # fmt: skip
        yield daemon


def app_client(socket_path: str) -> openai.AsyncOpenAI:
    """The official SDK exactly as an app would use it against intact."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    return openai.AsyncOpenAI(
        base_url="http://intact/v1", api_key="unused", max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, timeout=10.0),
    )  # fmt: skip


@dataclass
class Received:
    """What the app got from one streamed request."""

    contents: list[str] = field(default_factory=list)
    error: openai.APIError | None = None

    @property
    def text(self) -> str:
        return "".join(self.contents)


async def stream_chat(client: openai.AsyncOpenAI, **kwargs: Any) -> Received:
    got = Received()
    try:
        stream = await client.chat.completions.create(
            model=kwargs.pop("model", "sim-1"), messages=MESSAGES, stream=True, **kwargs
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    got.contents.append(choice.delta.content)
    except openai.APIError as exc:
        got.error = exc
    return got


async def scrape(admin_url: str | None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics from the admin listener: {(sample name, labels): value}."""
    assert admin_url is not None
    async with aiohttp.ClientSession() as session, session.get(f"{admin_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scraped(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
            *keys: str) -> dict[tuple[str, ...], float]:  # fmt: skip
    """Non-zero values of one sample name summed by the given label keys."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples.items():
        if sample != name:
            continue
        got = dict(labels)
        key = tuple(got.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return {k: v for k, v in out.items() if v}
