"""Time to the app's answer (or explicit error) and upstream calls, per failure pattern, with
intact's default settings: the figures behind the README's worst-case table.

    .venv/bin/python bench/routing_patterns.py            # every pattern, about 2 minutes
    .venv/bin/python bench/routing_patterns.py silent-primary slow-primary

Everything runs on loopback: the built-in simulator as upstream(s), intact in-process on a
Unix socket in a temporary directory, the official openai SDK as the app.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from intact.config import build_config
from intact.daemon import running_daemon
from intact.simulator import SimulatedUpstream, SimulatorSettings

MESSAGES = [{"role": "user", "content": "Tell me how intact keeps streams whole."}]


def _sim(**over: Any) -> SimulatedUpstream:
    base = {"tok_per_s": 200.0, "ttft": 0.2, "seed": 1}
    return SimulatedUpstream(SimulatorSettings(**{**base, **over}))


async def _ask(socket_path: str) -> str:
    client = openai.AsyncOpenAI(
        base_url="http://intact/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path), timeout=700.0
        ),
    )
    try:
        stream = await client.chat.completions.create(
            model="sim-1",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        )
        async for _ in stream:
            pass
    except openai.APIError as exc:
        return f"error {getattr(exc, 'status_code', '')} {exc.code or ''}".strip()
    return "answer"


async def _run(sims: list[SimulatedUpstream], prepare: Callable[[], None]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ups = [
            {"name": f"up{i}", "base_url": s.base_url, "resume": "prefill"}
            for i, s in enumerate(sims)
        ]
        cfg = build_config(
            {
                "server": {"socket": str(Path(tmp) / "i.sock"), "metrics_addr": "off"},
                "upstreams": ups,
            }
        )
        async with running_daemon(cfg) as d:
            prepare()
            started = time.monotonic()
            result = await _ask(d.socket_path)
            elapsed = time.monotonic() - started
        calls = ", ".join(f"up{i} {s.stats.chat_requests}" for i, s in enumerate(sims))
        return f"{elapsed:6.1f} s  {result:<24} calls: {calls}"


async def silent_primary() -> str:
    async with _sim(ttft=3600.0) as a, _sim() as b:
        return await _run([a, b], lambda: None)


async def slow_primary() -> str:
    async with _sim(ttft=20.0) as a, _sim() as b:
        return await _run([a, b], lambda: None)


async def silent_only() -> str:
    async with _sim(ttft=3600.0) as a:
        return await _run([a], lambda: None)


async def rate_limited() -> str:
    async with _sim(retry_after=0.0) as a:
        return await _run([a], lambda: a.schedule_faults(["http_429"] * 100))


async def server_errors() -> str:
    async with _sim() as a:
        return await _run([a], lambda: a.schedule_faults(["http_500"] * 100))


PATTERNS: dict[str, Callable[[], Awaitable[str]]] = {
    "silent-primary": silent_primary,
    "slow-primary": slow_primary,
    "silent-only": silent_only,
    "rate-limited": rate_limited,
    "server-errors": server_errors,
}


async def main(names: list[str]) -> None:
    for name in names or list(PATTERNS):
        print(f"{name:<16} {await PATTERNS[name]()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
