"""The acceptance run for mid-stream recovery: many streams through a deliberately flaky upstream.

    python bench/chaos.py [--streams 1000 --concurrency 50 --first-fault-rate 0.2
                           --continuation-fault-rate 0.1 --max-attempts 6 --seed 7]

The simulated upstream faults 20% of first attempts and 10% of continuations with every
fault kind, repeats the tail of the partial text in 20% of continuations (with whitespace
variation), and intact sits in front of it with 6 attempts per request. The openai SDK
judges every answer against the uninterrupted one. Passes when >= 99.5% are byte-exact,
none is silently truncated or garbled, and every other stream ended with an explicit error.
The first anomalies are printed with the simulator's record of each attempt: they are bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from intact.config import Config, build_config
from intact.daemon import running_daemon
from intact.demo.loadgen import (
    TRANSPORT_ERRORS,
    ConversationMix,
    LoadGenerator,
    LoadSettings,
    LoadStats,
    RequestResult,
    Verdict,
)
from intact.demo.outcomes import RelayOutcomes
from intact.simulator import ALL_FAULT_KINDS, SimulatedUpstream, SimulatorSettings, SimulatorStats
from intact.telemetry.api import Telemetry
from intact.telemetry.runtime import start_telemetry

UPSTREAM_NAME = "sim"
# The acceptance run uses the daemon's own breaker settings. `--breaker off` keeps it closed,
# to measure recovery alone under fault rates that would (rightly) open it.
BREAKER_OFF = {"minimum_calls": 1_000_000}


@dataclass(frozen=True, kw_only=True)
class ChaosOptions:
    streams: int = 1000
    concurrency: int = 50
    first_fault_rate: float = 0.2
    continuation_fault_rate: float = 0.1
    max_attempts: int = 6
    seed: int = 7
    kinds: tuple[str, ...] = ALL_FAULT_KINDS
    tok_per_s: float = 100.0
    ttft: float = 0.05
    repeat_prob: float = 0.2
    whitespace_variation_prob: float = 0.3
    restart_prob: float = 0.0
    retry_after: float = 0.2
    stall_timeout: float = 0.5
    first_token_timeout: float = 1.0
    base_delay: float = 0.05
    non_stream_fraction: float = 0.1
    tools_fraction: float = 0.1
    min_exact_pct: float = 99.5
    show_anomalies: int = 5
    log_level: str = "error"
    breaker: str = "default"
    """"off": the breaker never opens (BREAKER_OFF); "default": the daemon's defaults."""

    def simulator(self) -> SimulatorSettings:
        return SimulatorSettings(
            tok_per_s=self.tok_per_s,
            ttft=self.ttft,
            fault_rate=self.first_fault_rate,
            continuation_fault_rate=self.continuation_fault_rate,
            kinds=self.kinds,
            seed=self.seed,
            repeat_prob=self.repeat_prob,
            whitespace_variation_prob=self.whitespace_variation_prob,
            restart_prob=self.restart_prob,
            retry_after=self.retry_after,
        )

    def daemon(self, upstream_url: str, socket_path: str) -> Config:
        return build_config(
            {
                "server": {"socket": socket_path, "metrics_addr": "off", "drain_timeout": 2.0},
                "retry": {
                    "max_attempts": self.max_attempts,
                    "base_delay": self.base_delay,
                    "max_delay": 1.0,
                },
                "stream": {
                    "stall_timeout": self.stall_timeout,
                    "first_token_timeout": self.first_token_timeout,
                },
                "breaker": BREAKER_OFF if self.breaker == "off" else {},
                "telemetry": {"log_level": self.log_level},
                "upstreams": [
                    {"name": UPSTREAM_NAME, "base_url": upstream_url, "resume": "prefill"}
                ],
            }
        )


@dataclass
class ChaosReport:
    options: ChaosOptions
    stats: LoadStats
    outcomes: RelayOutcomes
    simulator: SimulatorStats
    wall_time: float
    recovered_exact: int = 0
    """Requests the relay saw interrupted that the app nevertheless got byte-exact."""
    notes: list[str] = field(default_factory=list)

    @property
    def exact_pct(self) -> float:
        done = self.stats.done
        return 100.0 * self.stats.exact / done if done else 0.0

    @property
    def unjudged(self) -> int:
        """Requests issued but never judged (cancelled by a stop)."""
        return self.stats.issued - self.stats.done

    @property
    def transport_errors(self) -> int:
        return sum(n for code, n in self.stats.error_codes.items() if code in TRANSPORT_ERRORS)

    def checks(self) -> list[tuple[str, bool, str]]:
        s = self.stats
        non_exact = s.done - s.exact
        return [
            (
                f"byte-exact >= {self.options.min_exact_pct}%",
                self.exact_pct >= self.options.min_exact_pct,
                f"{self.exact_pct:.2f}%",
            ),
            ("silent truncations == 0", s.silent == 0, str(s.silent)),
            ("duplicated/garbled == 0", s.garbled == 0, str(s.garbled)),
            (
                "every non-exact stream ended with an explicit error",
                non_exact == s.explicit_errors and self.unjudged == 0,
                f"{s.explicit_errors} of {non_exact} non-exact"
                + (f", {self.unjudged} unjudged" if self.unjudged else ""),
            ),
        ]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks())


def _attempt_log(sim: SimulatedUpstream, request_id: str) -> list[str]:
    """The simulator's record of every attempt of one conversation (newest 1000 kept)."""
    tag = f"(conversation {request_id})"
    lines = []
    for number, record in enumerate(
        (r for r in sim.stats.recent_requests if _mentions(r.body, tag)), start=1
    ):
        line = f"attempt {number}: {record.kind} fault={record.fault or 'none'}"
        messages = record.body.get("messages") or []
        if record.kind != "normal" and messages and isinstance(messages[-1], dict):
            partial = str(messages[-1].get("content") or "")
            line += f" partial={len(partial)} chars ending {partial[-40:]!r}"
        lines.append(line)
    return lines


def _mentions(body: Any, tag: str) -> bool:
    for message in body.get("messages") or ():
        if isinstance(message, dict) and tag in str(message.get("content") or ""):
            return True
    return False


async def run_chaos(opts: ChaosOptions, *, with_telemetry: bool = False) -> ChaosReport:
    """Run the whole chaos scenario in this event loop and return what happened.

    `with_telemetry` runs the daemon with `start_telemetry` (logs at `opts.log_level` on
    stderr, traces and metrics as `intact run` has them); without it the relay records
    into nothing but the outcome counters.
    """
    with tempfile.TemporaryDirectory(prefix="intact-chaos-") as tmp:
        async with SimulatedUpstream(opts.simulator()) as sim:
            config = opts.daemon(sim.base_url, os.path.join(tmp, "intact.sock"))
            runtime = start_telemetry(config, log_stream=sys.stderr) if with_telemetry else None
            try:
                return await _run(opts, sim, config, runtime.telemetry if runtime else None)
            finally:
                if runtime is not None:
                    runtime.shutdown()


async def _run(
    opts: ChaosOptions, sim: SimulatedUpstream, config: Config, telemetry: Telemetry | None
) -> ChaosReport:
    outcomes = RelayOutcomes(telemetry, keep_summaries=max(5_000, opts.streams))
    exact_ids: set[str] = set()

    def on_result(result: RequestResult) -> None:
        request_id = result.conversation.request_id
        if result.judgement.verdict is Verdict.EXACT:
            exact_ids.add(request_id)
        if result.anomaly is not None:
            # Now, while the simulator still has this conversation's attempts in its log.
            result.anomaly.notes += _attempt_log(sim, request_id)

    async with running_daemon(config, telemetry=outcomes) as daemon:
        load = LoadGenerator(
            daemon.socket_path,
            LoadSettings(
                concurrency=opts.concurrency,
                requests=opts.streams,
                seed=opts.seed,
                mix=ConversationMix(
                    non_stream_fraction=opts.non_stream_fraction,
                    tools_fraction=opts.tools_fraction,
                ),
                request_timeout=60.0,
                max_anomalies=max(20, opts.show_anomalies),
            ),
            on_result=on_result,
        )
        started = time.monotonic()
        stats = await load.run()
        wall = time.monotonic() - started
    # The relay records a request's summary just after its last byte: join them now.
    for anomaly in stats.anomalies:
        summary = outcomes.summary_for(anomaly.conversation.request_id)
        if summary is not None:
            kinds = ", ".join(k.value for k in summary.interruptions) or "none"
            anomaly.notes.append(
                f"relay: outcome={summary.outcome.value} attempts={summary.attempts} "
                f"resumes={summary.resumes} interruptions=[{kinds}] "
                f"error_code={summary.error_code}"
            )
    recovered = 0
    for request_id in exact_ids:
        summary = outcomes.summary_for(request_id)
        if summary is not None and summary.interruptions:
            recovered += 1
    return ChaosReport(opts, stats, outcomes, sim.stats, wall, recovered_exact=recovered)


def _counts(counter: Counter[Any] | dict[Any, int], *, by_key: bool = False) -> str:
    items = sorted(counter.items()) if by_key else Counter(counter).most_common()
    return ", ".join(f"{key}: {n}" for key, n in items) or "none"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report_text(r: ChaosReport) -> str:
    o, s = r.options, r.stats
    faults = sum(r.simulator.faults_injected.values())
    attempts = r.simulator.chat_requests
    lines = [
        f"intact chaos run: {o.streams} streams, {o.concurrency} concurrent, seed {o.seed}",
        f"  upstream: simulated, {o.first_fault_rate:.0%} of first attempts and "
        f"{o.continuation_fault_rate:.0%} of continuations faulted "
        f"({', '.join(o.kinds)}); repeat_prob {o.repeat_prob}, whitespace variation "
        f"{o.whitespace_variation_prob}, restart_prob {o.restart_prob}; http_429 Retry-After "
        f"{o.retry_after:g} s; {o.tok_per_s:g} tok/s, ttft {o.ttft:g} s",
        f"  daemon: retry.max_attempts {o.max_attempts}, base_delay {o.base_delay:g} s, "
        f"stall_timeout {o.stall_timeout:g} s, first_token_timeout {o.first_token_timeout:g} s, "
        "resume prefill",
        "  retry budget: the daemon's defaults (ratio 0.2 + 10/s over 10 s)",
        "  breaker: "
        + (
            f"kept closed (--breaker off: minimum_calls {BREAKER_OFF['minimum_calls']:,})"
            if o.breaker == "off"
            else "the daemon's defaults (50% over 30 s, minimum 20 calls)"
        ),
        "",
        "results",
        f"  streams              {s.done} ({s.streaming} streaming, {s.non_streaming} "
        "non-streaming)",
        f"  byte-exact           {s.exact} ({r.exact_pct:.2f}%)",
        f"  recovered            {r.recovered_exact} (interrupted upstream, delivered whole)",
        f"  explicit errors      {s.explicit_errors}"
        + (f" ({_counts(s.error_codes)})" if s.error_codes else ""),
        f"  silent truncations   {s.silent}",
        f"  duplicated/garbled   {s.garbled}",
        f"  protocol issues      {s.protocol_issues} (usage missing, ids changing, "
        "transport errors without an error event)",
        f"  transport errors     {r.transport_errors}",
        f"  unjudged             {r.unjudged}",
        f"  faults injected      {faults} in {attempts} upstream attempts "
        f"({_counts(r.simulator.faults_injected)})",
        f"  upstream requests    {_counts(dict(r.simulator.requests_by_kind))}",
        f"  attempts/request     {_counts(r.outcomes.attempts, by_key=True)}",
        f"  resumes/request      {_counts(r.outcomes.resumes, by_key=True)}",
        f"  relay outcomes       {_counts(r.outcomes.outcomes)}",
        f"  relay interruptions  {_counts(r.outcomes.interruptions)}",
        f"  TTFT p50 / p95       {_secs(s.ttft.percentile(50))} / {_secs(s.ttft.percentile(95))}",
        f"  latency p50 / p95    {_secs(s.latency.percentile(50))} / "
        f"{_secs(s.latency.percentile(95))}",
        f"  wall time            {r.wall_time:.1f} s",
    ]
    shown = s.anomalies[: o.show_anomalies]
    if shown:
        lines += ["", f"first {len(shown)} of {len(s.anomalies) + s.anomalies_dropped} anomalies"]
        for anomaly in shown:
            lines += ["  " + line for line in anomaly.render().splitlines()]
    lines += ["", "acceptance"]
    for name, ok, value in r.checks():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    lines.append(f"RESULT: {'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> ChaosOptions:
    d = ChaosOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=d.streams)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--first-fault-rate", type=float, default=d.first_fault_rate)
    p.add_argument("--continuation-fault-rate", type=float, default=d.continuation_fault_rate)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--kinds", default=",".join(d.kinds), help="comma-separated fault kinds")
    p.add_argument("--tok-per-s", type=float, default=d.tok_per_s)
    p.add_argument("--ttft", type=float, default=d.ttft)
    p.add_argument("--repeat-prob", type=float, default=d.repeat_prob)
    p.add_argument("--whitespace-variation", type=float, default=d.whitespace_variation_prob)
    p.add_argument("--restart-prob", type=float, default=d.restart_prob)
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--stall-timeout", type=float, default=d.stall_timeout)
    p.add_argument("--first-token-timeout", type=float, default=d.first_token_timeout)
    p.add_argument("--base-delay", type=float, default=d.base_delay)
    p.add_argument("--non-stream-fraction", type=float, default=d.non_stream_fraction)
    p.add_argument("--tools-fraction", type=float, default=d.tools_fraction)
    p.add_argument("--min-exact", type=float, default=d.min_exact_pct, metavar="PCT")
    p.add_argument("--show-anomalies", type=int, default=d.show_anomalies)
    p.add_argument(
        "--log-level", default=d.log_level, choices=("debug", "info", "warning", "error")
    )
    p.add_argument(
        "--breaker",
        choices=("off", "default"),
        default=d.breaker,
        help="default: the daemon's own breaker settings (default); off: never open it",
    )
    a = p.parse_args(argv)
    return ChaosOptions(
        streams=a.streams,
        concurrency=a.concurrency,
        first_fault_rate=a.first_fault_rate,
        continuation_fault_rate=a.continuation_fault_rate,
        max_attempts=a.max_attempts,
        seed=a.seed,
        kinds=tuple(k.strip() for k in a.kinds.split(",") if k.strip()),
        tok_per_s=a.tok_per_s,
        ttft=a.ttft,
        repeat_prob=a.repeat_prob,
        whitespace_variation_prob=a.whitespace_variation,
        restart_prob=a.restart_prob,
        retry_after=a.retry_after,
        stall_timeout=a.stall_timeout,
        first_token_timeout=a.first_token_timeout,
        base_delay=a.base_delay,
        non_stream_fraction=a.non_stream_fraction,
        tools_fraction=a.tools_fraction,
        min_exact_pct=a.min_exact,
        show_anomalies=a.show_anomalies,
        log_level=a.log_level,
        breaker=a.breaker,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        opts.simulator()
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_chaos(opts, with_telemetry=True))
    print(report_text(report), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
