"""`intact demo`: a simulated flaky upstream, the daemon in front of it, and app load, live.

No API key and no network: the upstream is the simulator on a loopback port (3.2% of
attempts interrupted by default), the daemon listens on a socket in a temporary directory,
and the load generator's openai SDK clients judge every answer. Ctrl-C (or --duration)
stops the load, lets in-flight streams finish, and prints a summary; the exit code is 1 if
any stream reached the app broken without an error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live

from intact.config import Config, build_config, load_toml, merge_tables
from intact.daemon import RunningDaemon, running_daemon
from intact.demo.loadgen import (
    ConversationMix,
    LoadGenerator,
    LoadSettings,
    RequestResult,
    Verdict,
)
from intact.demo.outcomes import BreakerEvent, RelayOutcomes
from intact.demo.view import (
    DemoSnapshot,
    OutageView,
    UpstreamView,
    plain_line,
    render_live,
    summary_text,
)
from intact.resilience.breaker import BreakerState
from intact.simulator import ALL_FAULT_KINDS, SimulatedUpstream, SimulatorSettings
from intact.telemetry.runtime import start_telemetry

EXIT_BAD_FLAGS = 2
EXIT_INTERRUPTED = 130
DRAIN_TIMEOUT = 10.0
"""Seconds in-flight streams get to finish after Ctrl-C before they are cancelled."""
LIVE_INTERVAL = 0.25
PLAIN_INTERVAL = 1.0
SIM_TTFT = 0.25
REPEAT_PROB = 0.1
UPSTREAM_NAME = "sim"

# Daemon settings the demo starts from (a --config file overrides them key by key): the
# simulator answers in well under a second, so the daemon's production timeouts (20 s stall,
# 30 s first token, 30 s breaker open) would only make the demo sit still.
DEMO_DEFAULTS: dict[str, Any] = {
    "stream": {"stall_timeout": 2.0, "first_token_timeout": 5.0},
    "breaker": {"open_duration": 10.0},
    "telemetry": {"log_level": "error"},
}


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """The demo's flags, validated."""

    duration: float | None
    concurrency: int
    fault_rate: float
    seed: int
    tok_per_s: float
    down_at: float | None
    down_for: float
    metrics_addr: str
    config_file: str | None
    live: bool
    api: str = "chat"

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, isatty: bool) -> DemoOptions:
        opts = cls(
            duration=args.duration,
            concurrency=args.concurrency,
            fault_rate=args.fault_rate,
            seed=args.seed if args.seed is not None else random.randrange(1, 1_000_000),
            tok_per_s=args.tok_per_s,
            down_at=args.down_at,
            down_for=args.down_for,
            metrics_addr=args.metrics_addr,
            config_file=args.config,
            live=isatty and not args.no_live,
            api=getattr(args, "api", "chat"),
        )
        if opts.duration is not None and opts.duration <= 0:
            raise ValueError(f"--duration must be > 0 seconds, got {opts.duration!r}")
        if opts.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {opts.concurrency!r}")
        if opts.down_at is not None and opts.down_at < 0:
            raise ValueError(f"--down-at must be >= 0 seconds, got {opts.down_at!r}")
        if opts.down_for <= 0:
            raise ValueError(f"--down-for must be > 0 seconds, got {opts.down_for!r}")
        return opts

    def simulator(self) -> SimulatorSettings:
        return SimulatorSettings(
            tok_per_s=self.tok_per_s,
            ttft=SIM_TTFT,
            fault_rate=self.fault_rate,
            continuation_fault_rate=self.fault_rate,
            kinds=ALL_FAULT_KINDS,
            seed=self.seed,
            repeat_prob=REPEAT_PROB,
        )


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of `intact demo` (cli.py); returns the exit code."""
    try:
        opts = DemoOptions.from_args(args, isatty=sys.stdout.isatty())
        sim_settings = opts.simulator()
    except ValueError as exc:
        print(f"intact demo: {exc}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    try:
        return asyncio.run(_main(opts, sim_settings))
    except KeyboardInterrupt:  # Ctrl-C while starting or stopping, outside the load
        print("intact demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def demo_config(opts: DemoOptions, upstream_url: str, socket_path: str) -> Config:
    """DEMO_DEFAULTS < the --config file < the demo's own socket, admin address, upstream."""
    raw = merge_tables(DEMO_DEFAULTS, load_toml(opts.config_file) if opts.config_file else {})
    raw["server"] = {
        **raw.get("server", {}),
        "socket": socket_path,
        "metrics_addr": opts.metrics_addr,
    }
    raw["upstreams"] = [
        {
            "name": UPSTREAM_NAME,
            "base_url": upstream_url,
            "resume": "prefill",
            "apis": ["chat", "responses", "messages"],  # the simulator speaks all three
        }
    ]
    return build_config(raw)


async def _main(opts: DemoOptions, sim_settings: SimulatorSettings) -> int:
    with tempfile.TemporaryDirectory(prefix="intact-demo-") as tmp:
        async with SimulatedUpstream(sim_settings) as sim:
            config = demo_config(opts, sim.base_url, os.path.join(tmp, "intact.sock"))
            tel = start_telemetry(config)
            try:
                outcomes = RelayOutcomes(tel.telemetry)
                async with running_daemon(
                    config, telemetry=outcomes, metrics_handler=tel.metrics_handler
                ) as daemon:
                    return await Demo(opts, sim, daemon, outcomes).run()
            finally:
                tel.shutdown()


class Demo:
    """One demo run: the load, the scripted outage, the view, the signals, the summary."""

    def __init__(
        self,
        opts: DemoOptions,
        sim: SimulatedUpstream,
        daemon: RunningDaemon,
        outcomes: RelayOutcomes,
    ) -> None:
        self.opts = opts
        self.sim = sim
        self.daemon = daemon
        self.outcomes = outcomes
        self.console = Console()
        self.load = LoadGenerator(
            daemon.socket_path,
            LoadSettings(
                concurrency=opts.concurrency,
                duration=opts.duration,
                seed=opts.seed,
                mix=ConversationMix(tools_fraction=0.05, api=opts.api),
                error_pause=0.25,
            ),
            on_result=self._on_result,
        )
        self.started = time.monotonic()
        self.signals = 0
        # The outage, as monotonic times, and what it did.
        self.down_since: float | None = None
        self.restored_at: float | None = None
        self.first_whole_at: float | None = None
        self.breaker_closed_at: float | None = None
        self.requests_while_open = 0
        self._open_since: dict[str, int] = {}
        outcomes.breaker_listeners.append(self._on_breaker)

    async def run(self) -> int:
        self._announce()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self.started = time.monotonic()
        load = asyncio.create_task(self.load.run(), name="demo-load")
        outage = asyncio.create_task(self._outage(), name="demo-outage")
        try:
            if self.opts.live:
                with Live(
                    render_live(self.snapshot()),
                    console=self.console,
                    auto_refresh=False,
                    transient=False,
                ) as live:
                    while not load.done():
                        await asyncio.wait({load}, timeout=LIVE_INTERVAL)
                        live.update(render_live(self.snapshot()), refresh=True)
            else:
                while not load.done():
                    await asyncio.wait({load}, timeout=PLAIN_INTERVAL)
                    print(plain_line(self.snapshot()), flush=True)
            await load
        finally:
            outage.cancel()
            load.cancel()
            await asyncio.gather(outage, load, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self.sim.set_mode("normal")
        final = self.snapshot()
        anomalies = [
            a.render()
            for a in self.load.stats.anomalies
            if a.verdict in (Verdict.SILENT_TRUNCATION, Verdict.GARBLED)
        ][:3]
        print(
            summary_text(
                final,
                list(self.outcomes.breaker_events),
                started_at=self.started,
                anomalies=anomalies,
            ),
            flush=True,
        )
        return 0 if final.broken == 0 else 1

    def _announce(self) -> None:
        admin = self.daemon.admin_url
        lines = [
            f"intact demo: seed {self.opts.seed}, {self.opts.concurrency} clients, "
            f"simulated upstream at {self.sim.base_url} "
            f"({self.opts.fault_rate:.1%} of attempts interrupted)",
            f"  daemon socket {self.daemon.socket_path}",
            f"  admin {admin}/metrics  {admin}/debug/state" if admin else "  admin listener off",
            "  demo daemon settings: stall_timeout 2 s, first_token_timeout 5 s, breaker "
            "open 10 s (--config overrides)",
        ]
        if self.opts.duration is None:
            lines.append("  running until Ctrl-C")
        print("\n".join(lines), flush=True)

    def _on_signal(self) -> None:
        """First Ctrl-C: no new requests, drain; second (or after DRAIN_TIMEOUT): cancel."""
        self.signals += 1
        if self.signals == 1:
            self.load.stop()
            asyncio.get_running_loop().call_later(DRAIN_TIMEOUT, self.load.cancel)
        else:
            self.load.cancel()

    async def _outage(self) -> None:
        if self.opts.down_at is None:
            return
        await asyncio.sleep(self.opts.down_at)
        self.sim.set_mode("down")
        self.down_since = time.monotonic()
        await asyncio.sleep(self.opts.down_for)
        self.sim.set_mode("normal")
        self.restored_at = time.monotonic()

    def _on_result(self, result: RequestResult) -> None:
        if (
            self.restored_at is not None
            and self.first_whole_at is None
            and self.down_since is not None
            and result.started >= self.down_since
            and result.finished >= self.restored_at
            and result.judgement.verdict is Verdict.EXACT
        ):
            self.first_whole_at = result.finished

    def _on_breaker(self, event: BreakerEvent) -> None:
        requests = self.sim.stats.generation_requests
        if event.new is BreakerState.OPEN:
            self._open_since[event.upstream] = requests
        elif event.old is BreakerState.OPEN and event.upstream in self._open_since:
            self.requests_while_open += requests - self._open_since.pop(event.upstream)
        if (
            event.new is BreakerState.CLOSED
            and self.restored_at is not None
            and self.breaker_closed_at is None
        ):
            self.breaker_closed_at = event.at

    def _outage_view(self) -> OutageView | None:
        if self.opts.down_at is None:
            return None
        phase = (
            "restored"
            if self.restored_at is not None
            else "down"
            if self.down_since is not None
            else "scheduled"
        )
        still_open = sum(
            self.sim.stats.generation_requests - since for since in self._open_since.values()
        )
        restored = self.restored_at

        def after(at: float | None) -> float | None:
            return None if at is None or restored is None else at - restored

        return OutageView(
            down_at=self.opts.down_at,
            down_for=self.opts.down_for,
            phase=phase,
            requests_while_open=self.requests_while_open + still_open,
            first_whole_after=after(self.first_whole_at),
            breaker_closed_after=after(self.breaker_closed_at),
        )

    def snapshot(self) -> DemoSnapshot:
        stats = self.load.stats
        sim = self.sim.stats
        upstreams = tuple(
            UpstreamView(up.name, up.breaker.state, up.budget.balance(), up.bulkhead.active)
            for up in self.daemon.relay.upstreams
        )
        return DemoSnapshot(
            elapsed=stats.elapsed(),
            streams_done=stats.done,
            rate=stats.rate(),
            active_streams=stats.in_flight,
            exact=stats.exact,
            recovered=self.outcomes.outcomes["recovered"],
            explicit_errors=stats.explicit_errors,
            silent=stats.silent,
            garbled=stats.garbled,
            upstream_attempts=sim.generation_requests - sim.requests_by_mode["down"],
            faults_injected=sum(sim.faults_injected.values()),
            down_rejections=sim.requests_by_mode["down"],
            fault_rate=self.opts.fault_rate,
            upstreams=upstreams,
            error_codes=tuple(stats.error_codes.most_common(4)),
            ttft_p50=stats.ttft.percentile(50),
            ttft_p95=stats.ttft.percentile(95),
            outage=self._outage_view(),
            metrics_url=f"{self.daemon.admin_url}/metrics" if self.daemon.admin_url else None,
            cancelled=stats.cancelled,
        )


__all__ = ["DEMO_DEFAULTS", "Demo", "DemoOptions", "demo_config", "run_demo"]
