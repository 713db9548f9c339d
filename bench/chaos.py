"""The acceptance run for mid-stream recovery: many streams through a deliberately flaky upstream.

    python bench/chaos.py [--streams 1000 --concurrency 50 --first-fault-rate 0.2
                           --continuation-fault-rate 0.1 --max-attempts 6 --seed 7
                           --text-style mixed --resume-mode prefill]
    make chaos ARGS="--text-style mixed --resume-mode instruct"

The simulated upstream faults 20% of first attempts and 10% of continuations with every
fault kind, and intact sits in front of it with 6 attempts per request, resuming in the
chosen mode. The answers are in the chosen text style (prose, code, table, cjk, json, or
mixed: one of them per conversation), picked through the model name (`sim-1:code`). A
prefill or prefix continuation goes on exactly, as a real model at temperature 0 does; an
instruct continuation repeats the tail of the partial text in 20% of resumes (the last
words, CJK characters or line of code, with whitespace variation), starts over in 5% and
starts over reworded in 5%. The app's text is judged against the uninterrupted answer the
simulator publishes for the same request (`SimulatedUpstream.expected_answer`), per style.
Passes when >= 99.5% are byte-exact, none is silently truncated or garbled, and every other
stream ended with an explicit error. The first anomalies of each style are printed with the
simulator's record of each attempt: they are bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
    Conversation,
    ConversationMix,
    LoadGenerator,
    LoadSettings,
    LoadStats,
    RequestResult,
    Verdict,
    judge,
)
from intact.demo.outcomes import RelayOutcomes
from intact.simulator import (
    ALL_FAULT_KINDS,
    STYLES,
    TEXT_STYLES,
    SimulatedUpstream,
    SimulatorSettings,
    SimulatorStats,
)
from intact.telemetry.api import Telemetry
from intact.telemetry.runtime import start_telemetry

UPSTREAM_NAME = "sim"
# The acceptance run uses the daemon's own breaker settings. `--breaker off` keeps it closed,
# to measure recovery alone under fault rates that would (rightly) open it.
BREAKER_OFF = {"minimum_calls": 1_000_000}
RESUME_MODES = ("prefill", "prefix", "instruct")
TOOLS_LABEL = "tools"
"""Requests answered with tool calls, whatever their style."""


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
    text_style: str = "mixed"
    """The style of every answer (one of STYLES); "mixed" picks one per conversation."""
    reasoning: bool = False
    """Ask for the reasoning variant: thinking in reasoning_content before the answer."""
    resume_mode: str = "prefill"
    repeat_prob: float = 0.2
    whitespace_variation_prob: float = 0.3
    restart_prob: float = 0.05
    paraphrase_prob: float = 0.05
    prefill_echo_prob: float = 0.0
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
            paraphrase_prob=self.paraphrase_prob,
            prefill_echo_prob=self.prefill_echo_prob,
            retry_after=self.retry_after,
            style=self.text_style,
        )

    def models(self) -> tuple[str, ...]:
        """The model names the app asks for: the style (and reasoning) as name suffixes."""
        suffix = f":{self.text_style}" + (":reasoning" if self.reasoning else "")
        return (f"sim-1{suffix}", f"sim-2{suffix}")

    def validate(self) -> None:
        """Raise ValueError naming a bad option (the simulator checks its own)."""
        if self.text_style not in STYLES:
            raise ValueError(f"--text-style must be one of {', '.join(STYLES)}")
        if self.resume_mode not in RESUME_MODES:
            raise ValueError(f"--resume-mode must be one of {', '.join(RESUME_MODES)}")
        self.simulator()

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
                    {"name": UPSTREAM_NAME, "base_url": upstream_url, "resume": self.resume_mode}
                ],
            }
        )


@dataclass
class StyleTally:
    """What the app got for the requests answered in one style, judged against that style."""

    stats: LoadStats
    exact_ids: set[str] = field(default_factory=set)
    recovered_exact: int = 0
    """Requests the relay saw interrupted that the app nevertheless got byte-exact."""

    @property
    def exact_pct(self) -> float:
        done = self.stats.done
        return 100.0 * self.stats.exact / done if done else 0.0


@dataclass
class ChaosReport:
    options: ChaosOptions
    stats: LoadStats
    """Every request, judged against the answer the simulator gives for its style."""
    outcomes: RelayOutcomes
    simulator: SimulatorStats
    wall_time: float
    by_style: dict[str, StyleTally] = field(default_factory=dict)
    issued: int = 0
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
        return self.issued - self.stats.done

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
        partial = next(
            (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
            None,
        )
        if record.kind != "normal" and partial is not None:
            text = str(partial.get("content") or "")
            line += f" partial={len(text)} chars ending {text[-40:]!r}"
        lines.append(line)
    return lines


def _mentions(body: Any, tag: str) -> bool:
    for message in body.get("messages") or ():
        if isinstance(message, dict) and tag in str(message.get("content") or ""):
            return True
    return False


def request_body(conversation: Conversation) -> dict[str, Any]:
    """The chat request body the load generator sends for `conversation`."""
    return {
        "model": conversation.model,
        "messages": list(conversation.messages),
        "stream": conversation.stream,
        **conversation.options(),
    }


async def run_chaos(opts: ChaosOptions, *, with_telemetry: bool = False) -> ChaosReport:
    """Run the whole chaos scenario in this event loop and return what happened.

    `with_telemetry` runs the daemon with `start_telemetry` (logs at `opts.log_level` on
    stderr, traces and metrics as `intact run` has them); without it the relay records
    into nothing but the outcome counters.
    """
    opts.validate()
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
    # The load generator judges against the default (prose) answer; each request is judged
    # again here against the answer the simulator gives for the request's own style.
    overall = LoadStats(max_anomalies=0, seed=opts.seed)
    by_style: dict[str, StyleTally] = {}

    def on_result(result: RequestResult) -> None:
        expected = sim.expected_answer(request_body(result.conversation))
        label = TOOLS_LABEL if expected.tool_calls else expected.style or "prose"
        judged = dataclasses.replace(
            result, judgement=judge(expected, result.observation), anomaly=None
        )
        overall.record(judged)
        tally = by_style.setdefault(
            label, StyleTally(LoadStats(max_anomalies=opts.show_anomalies, seed=opts.seed))
        )
        anomaly = tally.stats.record(judged)
        if judged.judgement.verdict is Verdict.EXACT:
            tally.exact_ids.add(result.conversation.request_id)
        if anomaly is not None:
            # Now, while the simulator still has this conversation's attempts in its log.
            anomaly.notes += _attempt_log(sim, result.conversation.request_id)

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
                    models=opts.models(),
                ),
                request_timeout=60.0,
                max_anomalies=0,
            ),
            on_result=on_result,
        )
        started = time.monotonic()
        await load.run()
        wall = time.monotonic() - started
    overall.started_at, overall.finished_at = load.stats.started_at, load.stats.finished_at
    # The relay records a request's summary just after its last byte: join them now.
    recovered = 0
    for tally in by_style.values():
        for anomaly in tally.stats.anomalies:
            summary = outcomes.summary_for(anomaly.conversation.request_id)
            if summary is not None:
                kinds = ", ".join(k.value for k in summary.interruptions) or "none"
                anomaly.notes.append(
                    f"relay: outcome={summary.outcome.value} attempts={summary.attempts} "
                    f"resumes={summary.resumes} interruptions=[{kinds}] "
                    f"error_code={summary.error_code}"
                )
        for request_id in tally.exact_ids:
            summary = outcomes.summary_for(request_id)
            if summary is not None and summary.interruptions:
                tally.recovered_exact += 1
        recovered += tally.recovered_exact
    return ChaosReport(
        opts,
        overall,
        outcomes,
        sim.stats,
        wall,
        by_style=by_style,
        issued=load.stats.issued,
        recovered_exact=recovered,
    )


def _counts(counter: Counter[Any] | dict[Any, int], *, by_key: bool = False) -> str:
    items = sorted(counter.items()) if by_key else Counter(counter).most_common()
    return ", ".join(f"{key}: {n}" for key, n in items) or "none"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


STYLE_ORDER = (*TEXT_STYLES, "refusal", TOOLS_LABEL)


def _styles(r: ChaosReport) -> list[str]:
    """The styles the run saw, in STYLE_ORDER."""
    return sorted(r.by_style, key=lambda s: STYLE_ORDER.index(s) if s in STYLE_ORDER else 99)


def style_table(r: ChaosReport) -> list[str]:
    """One line per style: streams, byte-exact, recovered, silent, garbled, explicit errors."""
    lines = [
        f"  {'style':<8} {'streams':>7} {'byte-exact':>17} {'recovered':>9} {'silent':>6} "
        f"{'garbled':>7} {'errors':>6}"
    ]
    for label in _styles(r):
        tally = r.by_style[label]
        s = tally.stats
        exact = f"{s.exact} ({tally.exact_pct:.2f}%)"
        lines.append(
            f"  {label:<8} {s.done:>7} {exact:>17} {tally.recovered_exact:>9} {s.silent:>6} "
            f"{s.garbled:>7} {s.explicit_errors:>6}"
        )
    return lines


def report_text(r: ChaosReport) -> str:
    o, s = r.options, r.stats
    faults = sum(r.simulator.faults_injected.values())
    attempts = r.simulator.chat_requests
    quirks = (
        f"instruct quirks: repeat {o.repeat_prob}, whitespace variation "
        f"{o.whitespace_variation_prob}, restart {o.restart_prob}, paraphrase "
        f"{o.paraphrase_prob}"
        if o.resume_mode == "instruct"
        else f"continues exactly (prefill echo {o.prefill_echo_prob})"
    )
    lines = [
        f"intact chaos run: {o.streams} streams, {o.concurrency} concurrent, seed {o.seed}",
        f"  answers: text style {o.text_style}"
        + (" with reasoning" if o.reasoning else "")
        + f" (models {', '.join(o.models())}); {o.tools_fraction:.0%} offer tools",
        f"  upstream: simulated, {o.first_fault_rate:.0%} of first attempts and "
        f"{o.continuation_fault_rate:.0%} of continuations faulted "
        f"({', '.join(o.kinds)}); {quirks}; http_429 Retry-After "
        f"{o.retry_after:g} s; {o.tok_per_s:g} tok/s, ttft {o.ttft:g} s",
        f"  daemon: retry.max_attempts {o.max_attempts}, base_delay {o.base_delay:g} s, "
        f"stall_timeout {o.stall_timeout:g} s, first_token_timeout {o.first_token_timeout:g} s, "
        f"resume {o.resume_mode}",
        "  retry budget: the daemon's defaults (ratio 0.2 + 10/s over 10 s)",
        "  breaker: "
        + (
            f"kept closed (--breaker off: minimum_calls {BREAKER_OFF['minimum_calls']:,})"
            if o.breaker == "off"
            else "the daemon's defaults (50% over 30 s, minimum 20 calls)"
        ),
        "",
        "results per style (judged against the simulator's uninterrupted answer)",
        *style_table(r),
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
    for label in _styles(r):
        stats = r.by_style[label].stats
        shown = stats.anomalies[: o.show_anomalies]
        if shown:
            total = len(stats.anomalies) + stats.anomalies_dropped
            lines += ["", f"{label}: first {len(shown)} of {total} anomalies"]
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
    p.add_argument(
        "--text-style",
        choices=STYLES,
        default=d.text_style,
        help="style of the answers; mixed picks one per conversation (default)",
    )
    p.add_argument(
        "--reasoning",
        action="store_true",
        help="answers think first, in reasoning_content (the model suffix :reasoning)",
    )
    p.add_argument(
        "--resume-mode",
        choices=RESUME_MODES,
        default=d.resume_mode,
        help="how intact asks the simulator to continue a broken stream",
    )
    p.add_argument("--tok-per-s", type=float, default=d.tok_per_s)
    p.add_argument("--ttft", type=float, default=d.ttft)
    p.add_argument(
        "--repeat-prob", type=float, default=d.repeat_prob, help="instruct: repeat the tail"
    )
    p.add_argument("--whitespace-variation", type=float, default=d.whitespace_variation_prob)
    p.add_argument(
        "--restart-prob", type=float, default=d.restart_prob, help="instruct: start over"
    )
    p.add_argument(
        "--paraphrase-prob",
        type=float,
        default=d.paraphrase_prob,
        help="instruct: start over reworded, then go on differently",
    )
    p.add_argument(
        "--prefill-echo-prob",
        type=float,
        default=d.prefill_echo_prob,
        help="prefill/prefix: the first delta repeats the whole partial (llama-server quirk)",
    )
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--stall-timeout", type=float, default=d.stall_timeout)
    p.add_argument("--first-token-timeout", type=float, default=d.first_token_timeout)
    p.add_argument("--base-delay", type=float, default=d.base_delay)
    p.add_argument("--non-stream-fraction", type=float, default=d.non_stream_fraction)
    p.add_argument("--tools-fraction", type=float, default=d.tools_fraction)
    p.add_argument("--min-exact", type=float, default=d.min_exact_pct, metavar="PCT")
    p.add_argument("--show-anomalies", type=int, default=d.show_anomalies, help="per style")
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
        text_style=a.text_style,
        reasoning=a.reasoning,
        resume_mode=a.resume_mode,
        repeat_prob=a.repeat_prob,
        whitespace_variation_prob=a.whitespace_variation,
        restart_prob=a.restart_prob,
        paraphrase_prob=a.paraphrase_prob,
        prefill_echo_prob=a.prefill_echo_prob,
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
        opts.validate()
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_chaos(opts, with_telemetry=True))
    print(report_text(report), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
