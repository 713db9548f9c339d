"""What intact costs: latency added per request and per event, CPU per event, memory.

Three processes, as in production: the simulated upstream (`intact simulate-upstream`), the
daemon (`intact run`) and this load client. Every scenario is run twice, straight to the
upstream over TCP and through intact's Unix socket, so the difference is intact's own cost.

    make bench            # or: .venv/bin/python bench/relay_overhead.py [--quick]

Numbers depend on the machine; the script prints the CPU model and core count with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

INTACT = [sys.executable, "-m", "intact"]
MESSAGES = [{"role": "user", "content": "Benchmark the relay, please."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def process(cmd: list[str], ready: Path | int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if isinstance(ready, Path) and ready.exists():
            break
        if isinstance(ready, int):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", ready), 0.2):
                break
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[3]} exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class StreamTiming:
    ttft: float
    total: float
    events: int


async def one_stream(session: aiohttp.ClientSession, url: str, max_tokens: int) -> StreamTiming:
    body = {"model": "sim-1", "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    start = time.perf_counter()
    ttft = 0.0
    events = 0
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - start
            events += chunk.count(b"\n\ndata: ") + 1 if chunk else 0
    return StreamTiming(ttft, time.perf_counter() - start, events)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


Connector = Callable[[], aiohttp.BaseConnector]


async def sequential(url: str, connector: Connector, n: int, max_tokens: int) -> list[StreamTiming]:
    async with aiohttp.ClientSession(connector=connector()) as session:
        for _ in range(5):
            await one_stream(session, url, max_tokens)  # warm-up: pools, imports, caches
        return [await one_stream(session, url, max_tokens) for _ in range(n)]


async def concurrent(
    url: str, connector: Connector, streams: int, concurrency: int, max_tokens: int
) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=connector()) as session:

        async def run() -> int:
            async with sem:
                return (await one_stream(session, url, max_tokens)).events

        start = time.perf_counter()
        counts = await asyncio.gather(*(run() for _ in range(streams)))
        return time.perf_counter() - start, sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    args = parser.parse_args()
    seq_n = 50 if args.quick else 300
    conc_streams, conc = (200, 50) if args.quick else (2000, 200)
    paced_streams = 100 if args.quick else 500
    paced_seconds = 4.0 if args.quick else 10.0

    port = free_port()
    direct = f"http://127.0.0.1:{port}/v1/chat/completions"
    via = "http://intact/v1/chat/completions"
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("processes: simulated upstream, intact daemon, load client (this script)\n")
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "intact.sock"
        results: list[tuple[str, str, str]] = []
        sim = [*INTACT, "simulate-upstream", "--port", str(port), "--ttft", "0", "--tok-per-s"]
        config = Path(tmp) / "intact.toml"
        # Room for every benchmark stream at once: the bound is not what is measured here.
        config.write_text(
            f'[[upstreams]]\nname = "sim"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            "max_concurrent_streams = 2048\n"
        )
        daemon_cmd = [*INTACT, "run", "--socket", str(sock), "--config", str(config),
                      "--metrics-addr", "off"]  # fmt: skip
        env_quiet = {"INTACT_TELEMETRY__LOG_LEVEL": "warning"}
        os.environ.update(env_quiet)

        # 1. Unpaced streams one at a time: latency intact adds per request.
        with process([*sim, "0"], port), process(daemon_cmd, sock):
            d = asyncio.run(sequential(direct, aiohttp.TCPConnector, seq_n, 64))
            v = asyncio.run(sequential(via, lambda: aiohttp.UnixConnector(str(sock)), seq_n, 64))
        for name, f in (
            ("TTFT", lambda t: t.ttft),
            ("whole stream (64 tokens)", lambda t: t.total),
        ):
            dv = [f(t) * 1000 for t in d]
            vv = [f(t) * 1000 for t in v]
            results.append(
                (
                    f"{name}, sequential x{seq_n}",
                    f"direct p50 {statistics.median(dv):.2f} / p99 {pct(dv, 99):.2f} ms",
                    f"via intact p50 {statistics.median(vv):.2f} / p99 {pct(vv, 99):.2f} ms "
                    f"(+{statistics.median(vv) - statistics.median(dv):.2f} ms p50)",
                )
            )

        # 2. Unpaced, many concurrent streams: events per second and CPU per event.
        with process([*sim, "0"], port), process(daemon_cmd, sock) as daemon:
            wall_d, ev_d = asyncio.run(
                concurrent(
                    direct, lambda: aiohttp.TCPConnector(limit=conc), conc_streams, conc, 200
                )
            )
            cpu0 = cpu_seconds(daemon.pid)
            wall_v, ev_v = asyncio.run(
                concurrent(
                    via,
                    lambda: aiohttp.UnixConnector(str(sock), limit=conc),
                    conc_streams,
                    conc,
                    200,
                )
            )
            cpu = cpu_seconds(daemon.pid) - cpu0
            rss = rss_mib(daemon.pid)
        results.append(
            (
                f"throughput, {conc_streams} streams x 200 tokens, {conc} concurrent",
                f"direct {ev_d / wall_d:,.0f} events/s",
                f"via intact {ev_v / wall_v:,.0f} events/s; daemon CPU {cpu * 1e6 / ev_v:.1f} "
                f"us/event; RSS {rss:.0f} MiB",
            )
        )

        # 3. Realistic pacing: N concurrent streams at 50 tok/s; daemon CPU and memory.
        with process([*sim, "50"], port), process(daemon_cmd, sock) as daemon:
            cpu0 = cpu_seconds(daemon.pid)
            rss0 = rss_mib(daemon.pid)
            tokens = int(50 * paced_seconds)
            wall, events = asyncio.run(
                concurrent(
                    via,
                    lambda: aiohttp.UnixConnector(str(sock), limit=0),
                    paced_streams,
                    paced_streams,
                    tokens,
                )
            )
            cpu = cpu_seconds(daemon.pid) - cpu0
            rss = rss_mib(daemon.pid)
        results.append(
            (
                f"paced, {paced_streams} concurrent streams at 50 tok/s (answers of 30-250 tokens)",
                f"{events / wall:,.0f} events/s relayed in {wall:.1f} s",
                f"daemon CPU {100 * cpu / wall:.0f}% of one core ({cpu * 1e6 / events:.1f} "
                f"us/event); RSS {rss0:.0f} -> {rss:.0f} MiB "
                f"({(rss - rss0) * 1024 / paced_streams:.0f} KiB/stream)",
            )
        )
    width = max(len(r[0]) for r in results)
    for label, a, b in results:
        print(f"{label:<{width}}  {a}\n{'':<{width}}  {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
