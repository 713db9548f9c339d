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

Every `sample-every` seconds the daemon's RSS, open fds, asyncio tasks and threads are read
(RSS, fds and threads from /proc; the task count from inside the daemon, see
`daemon_with_task_count`: /debug/state does not report it). The verdict looks at the last
2/3 of the run (the first third is warm-up: pools fill, the allocator finds its size):
- RSS is flat when the least-squares slope is below --max-rss-slope KiB/min, or when what
  that slope adds over the window stays below --rss-noise KiB (a short run cannot tell a
  slope from noise; the 30-minute run can);
- fds and tasks are flat when the median of the last third is within a few of the median of
  the middle third, and tasks return to the idle count once the load stops;
- no answer reached an app silently truncated or garbled.
Exit status 0 when all hold, 1 when not (with the daemon log's tail), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
IDLE_WAIT = 40.0
"""Seconds to wait after the load for the daemon to be idle again (upstream keep-alive: 30 s)."""


# --- the daemon, with its asyncio task count --------------------------------------------------


def daemon_with_task_count(count_file: str, argv: list[str]) -> int:
    """`intact <argv>` (the console script's own `cli.main`), writing the number of asyncio
    tasks of its event loop to ``count_file`` once a second.

    The counter is one more task; it does not count itself.
    """
    from intact import cli

    real_run = asyncio.run

    async def count_tasks() -> None:
        while True:
            tmp = f"{count_file}.tmp"
            with open(tmp, "w") as fh:  # noqa: ASYNC230 (a few bytes a second, in a tmp dir)
                fh.write(str(len(asyncio.all_tasks()) - 1))
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
    threads: int
    cpu_s: float
    in_flight: int
    done: int


@dataclass
class Trend:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakReport:
    opts: SoakOptions
    samples: list[Sample]
    idle_before: Sample
    idle_after: Sample
    stats: LoadStats
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
        window = self.window()
        if len(window) < 3:
            return 0.0
        slope = statistics.linear_regression(
            [s.at for s in window], [float(s.rss_kib) for s in window]
        ).slope
        return slope * 60

    def trends(self) -> list[Trend]:
        window = self.window()
        out = []
        slope = self.rss_slope()
        span_min = (window[-1].at - window[0].at) / 60 if len(window) > 1 else 0.0
        grown = slope * span_min
        rss_ok = slope < self.opts.max_rss_slope or grown < self.opts.rss_noise
        out.append(
            Trend(
                "RSS",
                rss_ok,
                f"{slope:+.0f} KiB/min over the last {span_min:.1f} min ({grown:+.0f} KiB; "
                f"flat: < {self.opts.max_rss_slope:g} KiB/min or < {self.opts.rss_noise:g} KiB)",
            )
        )
        third = max(1, len(window) // 2)
        middle, last = window[:third], window[-third:]
        for name, key, tolerance in (
            ("fds", "fds", FD_TOLERANCE),
            ("tasks", "tasks", TASK_TOLERANCE),
        ):
            values_mid = [getattr(s, key) for s in middle if getattr(s, key) is not None]
            values_last = [getattr(s, key) for s in last if getattr(s, key) is not None]
            if not values_mid or not values_last:
                out.append(Trend(name, True, "not measured"))
                continue
            a, b = statistics.median(values_mid), statistics.median(values_last)
            out.append(
                Trend(
                    name,
                    b - a <= tolerance,
                    f"median {a:g} -> {b:g} under load (flat: within +{tolerance})",
                )
            )
        before, after = self.idle_before, self.idle_after
        out.append(
            Trend(
                "idle fds",
                after.fds <= before.fds + FD_IDLE_TOLERANCE,
                f"{before.fds} before the load, {after.fds} {after.at - self.opts.seconds:.0f} s "
                f"after it (flat: within +{FD_IDLE_TOLERANCE})",
            )
        )
        if before.tasks is not None and after.tasks is not None:
            out.append(
                Trend(
                    "idle tasks",
                    after.tasks <= before.tasks + IDLE_TASK_TOLERANCE,
                    f"{before.tasks} before the load, {after.tasks} after it "
                    f"(flat: within +{IDLE_TASK_TOLERANCE})",
                )
            )
        s = self.stats
        out.append(
            Trend(
                "silent truncations",
                s.silent == 0 and s.garbled == 0,
                f"{s.silent} silent, {s.garbled} garbled",
            )
        )
        return out

    @property
    def passed(self) -> bool:
        return all(t.ok for t in self.trends())


def _read_proc(pid: int) -> tuple[int, int]:
    """Open fds and threads of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return fds, threads


def _read_tasks(count_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(count_file.read_text())
    return None


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
        return Sample(
            at=at,
            rss_kib=rss_kib(pid),
            fds=fds,
            tasks=_read_tasks(self.task_file),
            threads=threads,
            cpu_s=cpu_seconds(pid),
            in_flight=load.stats.in_flight if load else 0,
            done=load.stats.done if load else 0,
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
        # Idle again: app connections close at once, kept-alive upstream connections after
        # the connector's keepalive_timeout (30 s); wait for the fds to come back, or give up.
        idle_after = self.sample(time.monotonic() - started, load)
        deadline = time.monotonic() + IDLE_WAIT
        while time.monotonic() < deadline and idle_after.fds > idle_before.fds + FD_IDLE_TOLERANCE:
            await asyncio.sleep(1.0)
            idle_after = self.sample(time.monotonic() - started, load)
        report = SoakReport(o, samples, idle_before, idle_after, stats)
        try:
            status = await asyncio.to_thread(build_status, self.admin, read_admin(self.admin))
            report.relay = dict(status.get("streams") or {})
            report.interruptions = dict(status.get("interruptions") or {})
        except AdminUnreachable as exc:
            print(f"soak: could not read the daemon's counts: {exc}", file=sys.stderr)
        return report


def _header() -> str:
    return (
        f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'tasks':>5} {'threads':>7} "
        f"{'in flight':>9} {'done':>7} {'CPU %':>6}"
    )


def _row(s: Sample, first: Sample | None, prev: Sample | None = None) -> str:
    base = prev or first
    cpu = "-"
    if base is not None and s.at > base.at:
        cpu = f"{100 * (s.cpu_s - base.cpu_s) / (s.at - base.at):.0f}"
    tasks = "-" if s.tasks is None else str(s.tasks)
    return (
        f"{s.at:>7.0f} {s.rss_kib / 1024:>8.1f} {s.fds:>5} {tasks:>5} {s.threads:>7} "
        f"{s.in_flight:>9} {s.done:>7} {cpu:>6}"
    )


def render(report: SoakReport, rows: int = 20) -> str:
    from intact.demo.loadgen import TRANSPORT_ERRORS

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
    transport = sum(n for code, n in s.error_codes.items() if code in TRANSPORT_ERRORS)
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
        lines.append(f"  {'ok' if trend.ok else 'FAIL':<4} {trend.name}: {trend.detail}")
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
