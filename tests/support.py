"""Shared test helpers: a fast daemon config, the real openai SDK over the Unix socket, and
collectors that record exactly what an app saw."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import structlog

from intact.config import Config, build_config, merge_tables
from intact.daemon import RunningDaemon, running_daemon
from intact.simulator import SimulatedUpstream, SimulatorSettings
from intact.telemetry.api import Telemetry

FAST_SIM = SimulatorSettings(tok_per_s=0, ttft=0.0, seed=1, repeat_prob=0.0)

# A fixture's factory of started simulators (keyword arguments override its settings).
StartSim = Callable[..., Awaitable[SimulatedUpstream]]

# The simulator speaks chat completions, Responses and Anthropic Messages alike.
ALL_APIS = ["chat", "responses", "messages"]

MESSAGES = [{"role": "user", "content": "Tell me how intact keeps streams whole."}]


def fast_config(tmp_path: Path, upstreams: list[dict[str, Any]], **over: Any) -> Config:
    """Small timeouts and delays so fault tests take milliseconds, not minutes."""
    raw: dict[str, Any] = {
        "server": {
            "socket": str(tmp_path / "intact.sock"),
            "metrics_addr": "127.0.0.1:0",
            "drain_timeout": 1.0,
        },
        "retry": {"base_delay": 0.01, "max_delay": 0.05, "budget_min_per_second": 100.0},
        "stream": {
            "first_token_timeout": 1.0,
            "stall_timeout": 0.3,
            "connect_timeout": 1.0,
            "total_timeout": 30.0,
        },
        "upstreams": upstreams,
    }
    return build_config(merge_tables(raw, over))


@contextlib.asynccontextmanager
async def daemon_for(
    tmp_path: Path,
    sims: list[SimulatedUpstream] | SimulatedUpstream,
    telemetry: Telemetry | None = None,
    **over: Any,
) -> AsyncIterator[RunningDaemon]:
    sims = sims if isinstance(sims, list) else [sims]
    # The simulator continues an assistant prefill like vLLM or llama.cpp do.
    ups = over.pop("upstreams", None) or [
        {"name": f"sim{i}", "base_url": s.base_url, "resume": "prefill", "apis": ALL_APIS}
        for i, s in enumerate(sims)
    ]
    cfg = fast_config(tmp_path, ups, **over)
    async with running_daemon(cfg, telemetry=telemetry) as d:
        yield d


def sdk(socket_path: str, timeout: float = 30.0) -> openai.AsyncOpenAI:
    """The official SDK exactly as an app would use it against intact."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    return openai.AsyncOpenAI(
        base_url="http://intact/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, timeout=timeout),
    )


def anthropic_sdk(socket_path: str, timeout: float = 30.0) -> anthropic.AsyncAnthropic:
    """Anthropic's official SDK pointed at intact's socket, as an app would use it (it is
    built on httpx2, not httpx)."""
    transport = httpx2.AsyncHTTPTransport(uds=socket_path)
    return anthropic.AsyncAnthropic(
        base_url="http://intact",
        api_key="unused",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport, timeout=timeout),
    )


def raw_client(socket_path: str, timeout: float = 30.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=socket_path),
        base_url="http://intact",
        timeout=timeout,
    )


@dataclass
class Seen:
    """What the app received from one streamed request."""

    text: str = ""
    finish_reason: str | None = None
    usage: Any = None
    error: BaseException | None = None
    chunk_ids: set[str] = field(default_factory=set)
    roles: int = 0
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)


async def stream_chat(
    client: openai.AsyncOpenAI, messages: list[dict[str, Any]] | None = None, **kwargs: Any
) -> Seen:
    seen = Seen()
    try:
        stream = await client.chat.completions.create(
            model=kwargs.pop("model", "sim-1"),
            messages=messages or MESSAGES,
            stream=True,
            **kwargs,
        )
        async for chunk in stream:
            seen.chunk_ids.add(chunk.id)
            if chunk.usage:
                seen.usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                if delta.role:
                    seen.roles += 1
                if delta.content:
                    seen.text += delta.content
                for call in delta.tool_calls or ():
                    entry = seen.tool_calls.setdefault(
                        call.index, {"id": None, "name": "", "arguments": ""}
                    )
                    if call.id:
                        entry["id"] = call.id
                    if call.function and call.function.name:
                        entry["name"] += call.function.name
                    if call.function and call.function.arguments:
                        entry["arguments"] += call.function.arguments
                if choice.finish_reason:
                    seen.finish_reason = choice.finish_reason
    except openai.APIError as exc:
        seen.error = exc
    return seen


async def sse_lines(socket_path: str, body: dict[str, Any]) -> list[bytes]:
    """The raw SSE lines intact writes for one request (for wire-level assertions)."""
    async with (
        raw_client(socket_path) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        data = b"".join([chunk async for chunk in resp.aiter_bytes()])
    return [line for line in data.split(b"\n") if line]


def fast_sim(**over: Any) -> SimulatedUpstream:
    settings = SimulatorSettings(**{**FAST_SIM.__dict__, **over})
    return SimulatedUpstream(settings)


def restored_logging() -> Iterator[None]:
    """Body of an autouse fixture: a telemetry runtime reconfigures structlog and the root
    logger; undo that after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
