"""The load client: N concurrent streams against one path, in a process of its own.

    python bench/load.py < spec.json > result.json      (bench.py runs it; see LoadSpec)

Raw aiohttp over TCP or a Unix socket (no SDK: 10,000 streams must cost the client little),
closed loop: each of the N workers starts its next stream as soon as one ends, so N streams
stay open. Workers start spread over the ramp; the measurement window follows the ramp and
a warm-up. In the window it samples the relay's process tree (CPU at both ends, RSS every
half second) so its CPU is never mixed with the client's. Every content chunk's arrival
time is kept to measure lateness against the simulator's schedule (``timing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import (
    machine_cpu_seconds,
    tree_cpu_seconds,
    tree_rss_kib,
    tree_wait_seconds,
)
from timing import largest_gap, lateness

_COUNTS = re.compile(rb"attempts=(\d+) resumed=(\d+)")
_FINISH = (b'"finish_reason":"', b'"finish_reason": "')
_ERROR = (b'data: {"error"', b'data:{"error"')
PROMPTS = 256
_TRANSPORT_ERRORS = (aiohttp.ClientError, ConnectionError, OSError, asyncio.TimeoutError)


@dataclass
class LoadSpec:
    url: str
    unix_socket: str | None
    streams: int
    tok_per_s: float
    ramp_s: float
    warmup_s: float
    measure_s: float
    watch_pid: int | None = None
    sim_pid: int | None = None
    max_tokens: int | None = None
    model: str = "sim-1"
    api_key: str = "sk-bench"
    tag: str = "w"
    faulted: bool = False
    turns: int = 0
    """When set, each worker runs this many streams and stops (measure_s is then a
    time limit): how bench.py primes a path."""
    max_gate_s: float = 60.0
    """Longest wait after the warm-up for 99% of the streams to have their first chunk."""


@dataclass(slots=True)
class Stream:
    """What one stream looked like from the app's side."""

    sent: float
    first: float = 0.0
    content: list[float] = field(default_factory=list)
    events: list[float] = field(default_factory=list)
    outcome: str = "open"
    attempts: int = 1
    resumed: int = 0
    finished: bool = False
    done: bool = False
    error_event: bool = False


class Load:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.streams: list[Stream] = []
        self.window = (math.inf, math.inf)  # set once the streams are flowing
        self.in_window = 0  # data events (chunks) delivered inside the window
        self.flowing = [False] * spec.streams  # per worker: a first chunk arrived
        self.n_flowing = 0
        self.flowing_at = math.ceil(0.99 * spec.streams)
        self.mostly_flowing = asyncio.Event()
        self.stopping = False
        self.open = 0
        self.auth = f"Bearer {spec.api_key}"

    def body(self, worker: int, turn: int) -> bytes:
        # A pool of questions the simulator has answered before (it caches answers): an
        # answer never seen costs it ~7 ms of CPU, enough to make it the bottleneck.
        question = (worker * 7 + turn) % PROMPTS
        payload: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": "user", "content": f"Benchmark question {question}"}],
            "stream": True,
        }
        if self.spec.max_tokens:
            payload["max_tokens"] = self.spec.max_tokens
        return json.dumps(payload).encode()

    async def worker(self, session: aiohttp.ClientSession, index: int) -> None:
        await asyncio.sleep(index * self.spec.ramp_s / max(1, self.spec.streams))
        turn = 0
        while not self.stopping and not (self.spec.turns and turn >= self.spec.turns):
            record = Stream(sent=self.loop.time())
            self.streams.append(record)
            self.open += 1
            try:
                await self.one(session, record, self.body(index, turn), index)
            except _TRANSPORT_ERRORS as exc:
                record.outcome = "broken" if record.events else f"connect:{type(exc).__name__}"
                if not record.events:
                    await asyncio.sleep(0.05)  # e.g. a full listen backlog: do not spin
            finally:
                self.open -= 1
            turn += 1

    async def one(
        self, session: aiohttp.ClientSession, s: Stream, body: bytes, worker: int
    ) -> None:
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        async with session.post(self.spec.url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                s.outcome = f"http_{resp.status}"
                return
            tail = b""
            async for data in resp.content.iter_any():
                t = self.loop.time()
                if tail:
                    data = tail + data
                parts = data.split(b"\n\n")
                tail = parts.pop()
                for event in parts:
                    if not event:
                        continue
                    if event[:1] == b":":
                        if m := _COUNTS.search(event):
                            s.attempts, s.resumed = int(m[1]), int(m[2])
                        continue
                    s.events.append(t)
                    start, end = self.window
                    if start <= t < end:
                        self.in_window += 1
                    if not s.first:
                        s.first = t
                        if not self.flowing[worker]:
                            self.flowing[worker] = True
                            self.n_flowing += 1
                            if self.n_flowing >= self.flowing_at:
                                self.mostly_flowing.set()
                    if event.startswith(_ERROR):
                        s.error_event = True
                    elif event == b"data: [DONE]":
                        s.done = True
                    elif _FINISH[0] in event or _FINISH[1] in event:
                        s.finished = True
                    else:  # a role or content chunk (LiteLLM leaves finish_reason out)
                        s.content.append(t)
        if s.error_event:
            s.outcome = "error_event"
        elif s.done and s.finished:
            s.outcome = "complete"
        else:
            s.outcome = "cut"  # ended cleanly without [DONE]: a silent truncation

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        connector: aiohttp.BaseConnector
        if spec.unix_socket:
            connector = aiohttp.UnixConnector(spec.unix_socket, limit=0)
        else:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        pid = spec.watch_pid
        rss_before = tree_rss_kib(pid) if pid else 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            t0 = self.loop.time()
            tasks = [asyncio.create_task(self.worker(session, i)) for i in range(spec.streams)]
            if spec.turns:
                await asyncio.wait(tasks, timeout=spec.ramp_s + spec.measure_s)
            else:
                await asyncio.sleep(spec.ramp_s + spec.warmup_s)
                # Measure the steady state: wait until nearly every stream is flowing (a
                # relay starved of CPU may still be answering the ramp's requests).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mostly_flowing.wait(), spec.max_gate_s)
            gate_s = self.loop.time() - t0 - spec.ramp_s - spec.warmup_s
            window_start = self.loop.time()
            window_end = window_start + spec.measure_s
            self.window = (window_start, window_end)
            cpu0 = tree_cpu_seconds(pid) if pid else 0.0
            sim0 = tree_cpu_seconds(spec.sim_pid) if spec.sim_pid else 0.0
            own0 = _own_cpu()
            wait0 = tree_wait_seconds(pid) if pid else 0.0
            all0 = machine_cpu_seconds()
            wall0 = time.monotonic()
            rss_peak, open_at_peak = 0, 0
            while self.loop.time() < window_end and not spec.turns:
                if pid:
                    rss = tree_rss_kib(pid)
                    if rss > rss_peak:
                        rss_peak, open_at_peak = rss, self.open
                await asyncio.sleep(min(0.5, max(0.0, window_end - self.loop.time())))
            cpu1 = tree_cpu_seconds(pid) if pid else 0.0
            sim_cpu = (tree_cpu_seconds(spec.sim_pid) if spec.sim_pid else 0.0) - sim0
            own_cpu = _own_cpu() - own0
            waited = (tree_wait_seconds(pid) if pid else 0.0) - wait0
            everyone = machine_cpu_seconds() - all0
            wall = time.monotonic() - wall0
            self.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result = self.result(cpu1 - cpu0, wall, rss_before, rss_peak, open_at_peak)
        result["gate_s"] = max(0.0, gate_s)
        others = max(0.0, everyone - (cpu1 - cpu0) - sim_cpu - own_cpu)
        return {
            **result,
            "sim_cpu_s": sim_cpu,
            "client_cpu_s": own_cpu,
            "others_cpu_s": others,
            "relay_wait_s": waited,
        }

    def result(
        self, cpu: float, wall: float, rss_before: int, rss_peak: int, open_at_peak: int
    ) -> dict[str, Any]:
        spec = self.spec
        late: list[float] = []
        ttft: list[float] = []
        recovery_gaps: list[float] = []
        retry_ttfts: list[float] = []
        outcomes: Counter[str] = Counter()
        for s in self.streams:
            outcomes[s.outcome] += 1
            if s.attempts > 1:  # intact said so in its closing comment
                if s.outcome == "complete" and s.resumed == 0:
                    retry_ttfts.append(s.first - s.sent)  # retried before the first chunk
                elif s.outcome == "complete" and s.resumed == 1 and s.attempts == 2:
                    recovery_gaps.append(largest_gap(s.events))
                continue
            # An open stream of a faulted run may have been interrupted: only count it
            # once its end says it was not.
            settled = s.outcome == "complete" or (s.outcome == "open" and not spec.faulted)
            if settled and s.first:
                ttft.append(s.first - s.sent)
                late.extend(lateness(s.content, spec.tok_per_s, self.window))
        return {
            "cpu_s": cpu,
            "window_s": wall,
            "chunks": self.in_window,
            "rss_before_kib": rss_before,
            "rss_peak_kib": rss_peak,
            "open_at_peak": open_at_peak,
            "late_ms": [round(x * 1000, 3) for x in late],
            "ttft_ms": [round(x * 1000, 3) for x in ttft],
            "retry_ttft_ms": [round(x * 1000, 3) for x in retry_ttfts],
            "recovery_gap_ms": [round(x * 1000, 3) for x in recovery_gaps],
            "outcomes": dict(outcomes),
        }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (the hard limit too when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> int:
    spec = LoadSpec(**json.load(sys.stdin))
    raise_fd_limit(spec.streams * 2 + 256)
    result = asyncio.run(_run(spec))
    json.dump(result, sys.stdout)
    return 0


async def _run(spec: LoadSpec) -> dict[str, Any]:
    return await Load(spec).run()


if __name__ == "__main__":
    raise SystemExit(main())
