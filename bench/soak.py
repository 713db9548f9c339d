"""The soak: intact under steady load for a long time, its memory, fds and tasks sampled.

    python bench/soak.py [--seconds 1800] [--concurrency 32] [--fault-rate 0.032]
                         [--sample-every S] [--max-rss-slope 256] [--seed 7]
    make soak                      # 30 minutes (SOAK_SECONDS=1800)
    make soak SOAK_SECONDS=60      # what .ci/run does

The daemon runs as deployed (`intact run --config FILE`, its own process, telemetry on) in
front of the simulated upstream (`intact simulate-upstream`, its own process) interrupting
3.2% of attempts with every fault kind, the rate of the deployment that started the project.
Apps are `concurrency` clients of the official openai SDK on the socket, each sending the
next request when its last one ended, every answer judged against the simulator's.

Every `sample-every` seconds it reads the daemon's RSS, open fds, threads and upstream
connections from /proc, and what only the daemon sees (`daemon_with_task_count`;
/debug/state does not report it): its asyncio tasks, Python's allocator blocks and glibc's
heap in use and free. The verdict looks at the last 2/3 of the run (the first third is
warm-up: pools fill, the allocator finds its size):
- RSS is flat when the least-squares slope is below --max-rss-slope KiB/min, or when what
  that slope adds over the window stays below --rss-noise KiB (a short run cannot tell a
  slope from noise; the 30-minute run can); the heap columns say where growth goes;
- fds and tasks are flat when the median of the last third is within a few of the median of
  the middle third, and both return to their idle counts once the load stops (the kept-alive
  upstream connections counted apart);
- no answer reached an app silently truncated or garbled, no app connection was dropped
  without an error.
Exit status 0 when all hold, 1 when not (with the daemon log's tail), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from intact.status import AdminUnreachable, build_status, read_admin  # noqa: E402
from paths import StartError, free_port, port_open, spawn, stop, tail  # noqa: E402
from procstat import cpu_seconds, rss_kib  # noqa: E402

if TYPE_CHECKING:
    # Imported where used: the daemon process runs this file too (DAEMON_FLAG), and the app
    # side's openai SDK must not count in the daemon's memory.
    from intact.demo.loadgen import LoadGenerator, LoadStats

DAEMON_FLAG = "--daemon-with-task-count"
FD_TOLERANCE = 8
"""Open fds the last third may sit above the middle third (connections come and go)."""
TASK_TOLERANCE = 8
IDLE_TASK_TOLERANCE = 2
FD_IDLE_TOLERANCE = 2
"""Tasks and fds the idle daemon may hold after the run beyond what it held before it."""
IDLE_WAIT = 3.0
"""Seconds after the load for the daemon to be idle again (app connections closed)."""


# --- the daemon, with its asyncio task count --------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_usage(libc: ctypes.CDLL | None) -> tuple[int | None, int | None]:
    """glibc's heap: bytes in use (live allocations, Python's and C extensions') and bytes
    free but kept (fragmentation); None without glibc's mallinfo2."""
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None, None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd, info.fordblks


def daemon_with_task_count(count_file: str, argv: list[str]) -> int:
    """`intact <argv>` (the console script's own `cli.main`), writing once a second to
    ``count_file`` what only the daemon's own process can see: the asyncio tasks of its
    event loop, the blocks Python's small-object allocator holds (``sys.getallocatedblocks``:
    Python objects piling up show there), and glibc's heap in use and free (`heap_usage`).
    SIGUSR1 hands the free heap back to the system (``malloc_trim``).

    The counter is one more task; it does not count itself.
    """
    from intact import cli

    real_run = asyncio.run
    libc = None
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")

    async def count_tasks() -> None:
        while True:
            used, free = heap_usage(libc)
            counts = {
                "tasks": len(asyncio.all_tasks()) - 1,
                "py_blocks": sys.getallocatedblocks(),
                "heap_used": used,
                "heap_free": free,
            }
            tmp = f"{count_file}.tmp"
            with open(tmp, "w") as fh:  # noqa: ASYNC230 (a few bytes a second, in a tmp dir)
                fh.write(json.dumps(counts))
            os.replace(tmp, count_file)
            await asyncio.sleep(1.0)

    def run_counting(main, **kwargs):  # type: ignore[no-untyped-def]
        async def counted():  # type: ignore[no-untyped-def]
            counter = asyncio.create_task(count_tasks())
            try:
                return await main
            finally:
                counter.cancel()

        return real_run(counted(), **kwargs)

    def trim(*_: object) -> None:
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)

    signal.signal(signal.SIGUSR1, trim)
    asyncio.run = run_counting  # type: ignore[assignment]
    return cli.main(argv)


# --- options, samples, verdict ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SoakOptions:
    seconds: float = 1800.0
    concurrency: int = 32
    fault_rate: float = 0.032
    tok_per_s: float = 60.0
    seed: int = 7
    sample_every: float | None = None
    """Seconds between samples; default: 1/60 of the run, at least 1 s."""
    max_rss_slope: float = 256.0
    """KiB per minute over the last 2/3 of the run; 256 KiB/min is 15 MiB an hour."""
    rss_noise: float = 4096.0
    """KiB: growth over the window that a short run cannot tell from noise."""

    @property
    def interval(self) -> float:
        return self.sample_every or max(1.0, self.seconds / 60)


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds since the load started."""
    rss_kib: int
    fds: int
    tasks: int | None
    py_blocks: int | None
    """Blocks of Python's small-object allocator (live Python objects, roughly)."""
    heap_used_kib: int | None
    """glibc heap in live allocations (Python's large objects, C extensions', arenas)."""
    heap_free_kib: int | None
    """glibc heap freed but kept: RSS that is fragmentation, not live data."""
    threads: int
    cpu_s: float
    in_flight: int
    done: int
    upstream_conns: int = 0
    """Established connections to the upstream (the connection pool, idle or busy)."""


@dataclass
class Trend:
    name: str
    ok: bool
    detail: str
    judged: bool = True
    """False: shown to explain the others, not part of the verdict."""


@dataclass
class SoakReport:
    opts: SoakOptions
    samples: list[Sample]
    idle_before: Sample
    idle_after: Sample
    stats: LoadStats
    trimmed: Sample | None = None
    """Idle after the load, once the daemon's allocator returned what it could (malloc_trim)."""
    relay: dict[str, int] = field(default_factory=dict)
    """Streams by outcome as the daemon counted them (/metrics)."""
    interruptions: dict[str, int] = field(default_factory=dict)

    def window(self) -> list[Sample]:
        """The samples of the last 2/3 of the load (the first third is warm-up; once the
        load's time is up, the clients finish their last requests and stop: not steady)."""
        end = self.opts.seconds
        return [s for s in self.samples if end / 3 <= s.at <= end]

    def rss_slope(self) -> float:
        """KiB per minute, least squares over the window."""
        return _slope(self.window(), "rss_kib") or 0.0

    def trends(self) -> list[Trend]:
        """The verdict's checks, with the lines that explain them (judged=False)."""
        return [
            *self._memory(),
            *self._flat_under_load(),
            *self._idle_again(),
            *self._answers(),
        ]

    def _memory(self) -> list[Trend]:
        o, window = self.opts, self.window()
        slope = self.rss_slope()
        minutes = (window[-1].at - window[0].at) / 60 if len(window) > 1 else 0.0
        added = slope * minutes
        out = [
            Trend(
                "RSS",
                slope < o.max_rss_slope or added < o.rss_noise,
                f"{slope:+.0f} KiB/min over the last {minutes:.1f} min ({added:+.0f} KiB; "
                f"flat: < {o.max_rss_slope:g} KiB/min or < {o.rss_noise:g} KiB)",
            )
        ]
        parts = [
            f"{label} {per_min:+.0f} {unit}/min"
            for label, key, unit in (
                ("heap in use", "heap_used_kib", "KiB"),
                ("heap free (kept by glibc)", "heap_free_kib", "KiB"),
                ("Python allocator blocks", "py_blocks", "blocks"),
            )
            if (per_min := _slope(window, key)) is not None
        ]
        if parts:
            out.append(Trend("where RSS goes", True, ", ".join(parts), judged=False))
        if self.trimmed is not None:
            grown = self.idle_after.rss_kib - self.idle_before.rss_kib
            kept = self.trimmed.rss_kib - self.idle_before.rss_kib
            out.append(
                Trend(
                    "RSS when idle",
                    True,
                    f"{grown / 1024:+.1f} MiB over the idle daemon before the load, "
                    f"{kept / 1024:+.1f} MiB once malloc_trim(0) returned freed heap",
                    judged=False,
                )
            )
        return out

    def _flat_under_load(self) -> list[Trend]:
        """fds and tasks: the last third of the run against the middle third."""
        window = self.window()
        half = max(1, len(window) // 2)
        middle, last = window[:half], window[-half:]
        out = []
        for name, tolerance in (("fds", FD_TOLERANCE), ("tasks", TASK_TOLERANCE)):
            before = [v for s in middle if (v := getattr(s, name)) is not None]
            after = [v for s in last if (v := getattr(s, name)) is not None]
            if not before or not after:
                out.append(Trend(name, True, "not measured", judged=False))
                continue
            a, b = statistics.median(before), statistics.median(after)
            detail = f"median {a:g} -> {b:g} under load (flat: within +{tolerance})"
            out.append(Trend(name, b - a <= tolerance, detail))
        return out

    def _idle_again(self) -> list[Trend]:
        """Once the load stopped: what the daemon holds beyond what it held before it."""
        before, after = self.idle_before, self.idle_after
        out = [
            Trend(
                "idle fds",
                after.fds - after.upstream_conns <= before.fds + FD_IDLE_TOLERANCE,
                f"{before.fds} before the load, {after.fds} after it of which "
                f"{after.upstream_conns} kept-alive upstream connections (flat: the rest "
                f"within +{FD_IDLE_TOLERANCE})",
            )
        ]
        if before.tasks is not None and after.tasks is not None:
            out.append(
                Trend(
                    "idle tasks",
                    after.tasks <= before.tasks + IDLE_TASK_TOLERANCE,
                    f"{before.tasks} before the load, {after.tasks} after it "
                    f"(flat: within +{IDLE_TASK_TOLERANCE})",
                )
            )
        return out

    def _answers(self) -> list[Trend]:
        s = self.stats
        return [
            Trend(
                "silent truncations",
                s.silent == 0 and s.garbled == 0,
                f"{s.silent} silent, {s.garbled} garbled",
            ),
            Trend(
                "app connections dropped without an error",
                self.transport_errors == 0,
                str(self.transport_errors),
            ),
        ]

    @property
    def transport_errors(self) -> int:
        """Requests whose connection died or hung without intact saying why."""
        from intact.demo.loadgen import TRANSPORT_ERRORS

        return sum(n for code, n in self.stats.error_codes.items() if code in TRANSPORT_ERRORS)

    @property
    def passed(self) -> bool:
        return all(t.ok for t in self.trends() if t.judged)


def _slope(samples: list[Sample], key: str) -> float | None:
    """Least-squares slope of ``key`` per minute over ``samples`` (None if not measured)."""
    points = [(s.at, getattr(s, key)) for s in samples if getattr(s, key) is not None]
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, [float(y) for y in ys]).slope * 60


def _read_proc(pid: int) -> tuple[int, int]:
    """Open fds and threads of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return fds, threads


def _read_counts(count_file: Path) -> dict[str, int | None]:
    """What the daemon wrote about itself (daemon_with_task_count)."""
    with contextlib.suppress(OSError, ValueError):
        counts: dict[str, int | None] = json.loads(count_file.read_text())
        return counts
    return {}


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of ``pid`` to ``port`` (its kept-alive upstream pool)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                    count += 1
    return count


# --- the run ------------------------------------------------------------------------------------


class Soak:
    def __init__(self, opts: SoakOptions, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.socket = workdir / "intact.sock"
        self.config = workdir / "intact.toml"
        self.daemon_log = workdir / "intact.log"
        self.sim_log = workdir / "simulator.log"
        self.task_file = workdir / "tasks"
        self.admin_port = free_port()
        self.sim_port = free_port()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        o = self.opts
        sim_cmd = [
            sys.executable, "-m", "intact", "simulate-upstream",
            f"--port={self.sim_port}", f"--fault-rate={o.fault_rate}", f"--seed={o.seed}",
            f"--tok-per-s={o.tok_per_s}", "--ttft=0.25",
        ]  # fmt: skip
        self.sim = spawn(sim_cmd, self.sim_log, lambda: port_open(self.sim_port))
        # The demo's settings (intact demo): timeouts sized for a simulator that answers in
        # well under a second; everything else is the daemon's default.
        self.config.write_text(
            f"""[server]
socket = "{self.socket}"
metrics_addr = "127.0.0.1:{self.admin_port}"

[stream]
stall_timeout = 2.0
first_token_timeout = 5.0

[breaker]
open_duration = 10.0

[telemetry]
log_level = "warning"
log_format = "json"

[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:{self.sim_port}/v1"
resume = "prefill"
"""
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), DAEMON_FLAG, str(self.task_file)]
        cmd += ["run", "--config", str(self.config)]
        self.daemon = spawn(cmd, self.daemon_log, self._ready)

    def _ready(self) -> bool:
        return self.socket.exists() and port_open(self.admin_port) and self.task_file.exists()

    def stop(self) -> None:
        stop(self.daemon, grace=40.0)
        stop(self.sim)

    def sample(self, at: float, load: LoadGenerator | None) -> Sample:
        assert self.daemon is not None
        pid = self.daemon.pid
        fds, threads = _read_proc(pid)
        counts = _read_counts(self.task_file)
        used, free = counts.get("heap_used"), counts.get("heap_free")
        return Sample(
            at=at,
            rss_kib=rss_kib(pid),
            fds=fds,
            tasks=counts.get("tasks"),
            py_blocks=counts.get("py_blocks"),
            heap_used_kib=None if used is None else used // 1024,
            heap_free_kib=None if free is None else free // 1024,
            threads=threads,
            cpu_s=cpu_seconds(pid),
            in_flight=load.stats.in_flight if load else 0,
            done=load.stats.done if load else 0,
            upstream_conns=connections_to(pid, self.sim_port),
        )

    async def run(self) -> SoakReport:
        from intact.demo.loadgen import ConversationMix, LoadGenerator, LoadSettings

        o = self.opts
        await asyncio.sleep(1.5)  # the task counter writes once a second
        idle_before = self.sample(0.0, None)
        load = LoadGenerator(
            str(self.socket),
            LoadSettings(
                concurrency=o.concurrency,
                duration=o.seconds,
                seed=o.seed,
                mix=ConversationMix(tools_fraction=0.05),
                error_pause=0.25,
                max_anomalies=5,
            ),
        )
        samples: list[Sample] = []
        running = asyncio.create_task(load.run())
        started = time.monotonic()
        print(_header(), flush=True)
        while not running.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), o.interval)
            if running.done():
                break
            sample = self.sample(time.monotonic() - started, load)
            samples.append(sample)
            print(_row(sample, samples[0] if samples else None), flush=True)
        stats = running.result()
        # Idle again: app connections close at once; kept-alive upstream connections stay
        # until the connector's keepalive_timeout (30 s, checked every 30 s) and are counted
        # apart, so any other fd left open shows.
        await asyncio.sleep(IDLE_WAIT)
        idle_after = self.sample(time.monotonic() - started, load)
        report = SoakReport(o, samples, idle_before, idle_after, stats)
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGUSR1)  # malloc_trim(0) in the daemon
        await asyncio.sleep(1.5)
        report.trimmed = self.sample(time.monotonic() - started, load)
        try:
            status = await asyncio.to_thread(
                lambda: build_status(self.admin, read_admin(self.admin))
            )
            report.relay = dict(status.get("streams") or {})
            report.interruptions = dict(status.get("interruptions") or {})
        except AdminUnreachable as exc:
            print(f"soak: could not read the daemon's counts: {exc}", file=sys.stderr)
        return report


def _header() -> str:
    return (
        f"{'t (s)':>6} {'RSS MiB':>7} {'heap used':>9} {'heap free':>9} {'py blocks':>9} "
        f"{'fds':>4} {'tasks':>5} {'threads':>7} {'upstream conns':>14} {'in flight':>9} "
        f"{'done':>6} {'CPU %':>5}"
    )


def _row(s: Sample, first: Sample | None, prev: Sample | None = None) -> str:
    base = prev or first
    cpu = "-"
    if base is not None and s.at > base.at:
        cpu = f"{100 * (s.cpu_s - base.cpu_s) / (s.at - base.at):.0f}"
    tasks = "-" if s.tasks is None else str(s.tasks)
    blocks = "-" if s.py_blocks is None else f"{s.py_blocks / 1000:.0f}k"
    used = "-" if s.heap_used_kib is None else f"{s.heap_used_kib / 1024:.1f}"
    free = "-" if s.heap_free_kib is None else f"{s.heap_free_kib / 1024:.1f}"
    return (
        f"{s.at:>6.0f} {s.rss_kib / 1024:>7.1f} {used:>9} {free:>9} {blocks:>9} {s.fds:>4} "
        f"{tasks:>5} {s.threads:>7} {s.upstream_conns:>14} {s.in_flight:>9} {s.done:>6} "
        f"{cpu:>5}"
    )


def render(report: SoakReport, rows: int = 20) -> str:
    o, s = report.opts, report.stats
    lines = [
        "",
        f"soak: {o.seconds:g} s, {o.concurrency} concurrent clients, simulator fault rate "
        f"{o.fault_rate:.1%}, sample every {o.interval:g} s",
        "trend (daemon process):",
        _header(),
        _row(report.idle_before, None) + "   idle, before the load",
    ]
    samples = report.samples
    step = max(1, len(samples) // rows)
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    prev = None
    for sample in picked:
        after = "   the load's time is up: last requests" if sample.at > o.seconds else ""
        lines.append(_row(sample, None, prev) + after)
        prev = sample
    lines.append(_row(report.idle_after, None) + "   idle, after the load")
    if report.trimmed is not None:
        lines.append(_row(report.trimmed, None) + "   idle, after malloc_trim(0)")
    transport = report.transport_errors
    recovered = report.relay.get("recovered")
    lines += [
        "",
        f"requests: {s.done} judged ({s.streaming} streams, {s.non_streaming} non-streaming), "
        f"{s.exact} exact, {s.explicit_errors} explicit errors ({transport} of them transport "
        f"errors), {s.silent} silent truncations, {s.garbled} garbled",
        "daemon counted: "
        + (", ".join(f"{k} {v}" for k, v in report.relay.items()) or "(no /metrics)")
        + (f" -> {recovered} recovered whole" if recovered is not None else ""),
        "interruptions: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report.interruptions.items())) or "none"),
        "errors the apps got: "
        + (", ".join(f"{k} {v}" for k, v in s.error_codes.most_common()) or "none"),
        "",
        "verdict:",
    ]
    for trend in report.trends():
        word = "info" if not trend.judged else "ok" if trend.ok else "FAIL"
        lines.append(f"  {word:<4} {trend.name}: {trend.detail}")
    for anomaly in s.anomalies:
        lines.append(anomaly.render())
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> SoakOptions:
    default_seconds = float(os.environ.get("SOAK_SECONDS", "1800"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--seconds",
        type=float,
        default=default_seconds,
        help="how long the load runs (default: $SOAK_SECONDS or 1800)",
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--fault-rate", type=float, default=0.032)
    p.add_argument("--tok-per-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--sample-every",
        type=float,
        default=None,
        help="seconds between samples (default: 1/60 of the run, at least 1)",
    )
    p.add_argument("--max-rss-slope", type=float, default=256.0, help="KiB per minute")
    p.add_argument("--rss-noise", type=float, default=4096.0, help="KiB")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.concurrency < 1:
        p.error("--seconds must be > 0 and --concurrency >= 1")
    return SoakOptions(
        seconds=a.seconds, concurrency=a.concurrency, fault_rate=a.fault_rate,
        tok_per_s=a.tok_per_s, seed=a.seed, sample_every=a.sample_every,
        max_rss_slope=a.max_rss_slope, rss_noise=a.rss_noise,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [DAEMON_FLAG]:
        return daemon_with_task_count(args[1], args[2:])
    opts = parse_args(args)
    with tempfile.TemporaryDirectory(prefix="intact-soak-") as tmp:
        soak = Soak(opts, Path(tmp))
        try:
            soak.start()
            report = asyncio.run(soak.run())
        except StartError as exc:
            print(f"soak: could not start: {exc}", file=sys.stderr)
            soak.stop()
            return 1
        except KeyboardInterrupt:
            soak.stop()
            return 130
        soak.stop()
        print(render(report))
        summary = {
            "seconds": opts.seconds,
            "rss_slope_kib_per_min": round(report.rss_slope(), 1),
            "requests": report.stats.done,
            "silent_truncations": report.stats.silent,
            "passed": report.passed,
        }
        print("soak-result " + json.dumps(summary))
        if not report.passed:
            print(f"daemon log (tail):\n{tail(soak.daemon_log)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
