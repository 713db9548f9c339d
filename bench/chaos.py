"""The acceptance run for mid-stream recovery: many streams through a deliberately flaky upstream.

    python bench/chaos.py [--streams 1000 --concurrency 50 --first-fault-rate 0.2
                           --continuation-fault-rate 0.1 --max-attempts 6 --seed 7
                           --text-style mixed --resume-mode prefill --api chat]
    make chaos ARGS="--text-style mixed --resume-mode instruct"
    make chaos ARGS="--api responses --background-fraction 0.3 --show-recovered 1"
    make chaos ARGS="--api all"

The simulated upstream faults 20% of first attempts and 10% of continuations with every
fault kind, and intact sits in front of it with 6 attempts per request, resuming in the
chosen mode. The answers are in the chosen text style (prose, code, table, cjk, json, or
mixed: one of them per conversation), picked through the model name (`sim-1:code`). A
prefill or prefix continuation goes on exactly, as a real model at temperature 0 does; an
instruct continuation repeats the tail of the partial text in 20% of resumes (the last
words, CJK characters or line of code, with whitespace variation), starts over in 5% and
starts over reworded in 5%. The app's text is judged against the uninterrupted answer the
simulator publishes for the same request (`SimulatedUpstream.expected_answer`), per style.
`--api` picks the API the app speaks: chat completions (the default) and OpenAI Responses
through the openai SDK, Anthropic Messages through the anthropic SDK, or all three one after
another; the same conversations go over each and are judged against that API's expected
answer (`messages_api.expected`, `responses_api.expected`). `--background-fraction` sends
that share of streaming Responses requests in background mode, so a broken stream is
reattached (`GET /v1/responses/{id}?starting_after=N`) rather than continued.
`--show-recovered N` prints, per kind of recovery, N streams that broke upstream and reached
the app whole, as the SDK handed them over (events trimmed around the seam).

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

import orjson

from intact.config import Config, build_config
from intact.daemon import running_daemon
from intact.demo.loadgen import (
    APIS,
    TRANSPORT_ERRORS,
    Conversation,
    ConversationMix,
    LoadGenerator,
    LoadSettings,
    LoadStats,
    RequestResult,
    Verdict,
    answer_of_message,
    answer_of_response,
    judge,
)
from intact.demo.outcomes import RelayOutcomes
from intact.simulator import (
    ALL_FAULT_KINDS,
    STYLES,
    TEXT_STYLES,
    ExpectedAnswer,
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
API_CHOICES = (*APIS, "all")
SIMULATOR_APIS = list(APIS)
"""The simulator speaks every API: the upstream is configured to serve all three."""


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
    api: str = "chat"
    """The API the app speaks (one of APIS), or "all": each in turn (see `main`)."""
    background_fraction: float = 0.0
    """Responses: the share of streaming requests sent in background mode."""
    show_recovered: int = 0
    """Streams to print, per recovery kind, that broke upstream and reached the app whole."""

    def apis(self) -> tuple[str, ...]:
        return APIS if self.api == "all" else (self.api,)

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
        if self.api not in API_CHOICES:
            raise ValueError(f"--api must be one of {', '.join(API_CHOICES)}")
        if not 0.0 <= self.background_fraction <= 1.0:
            raise ValueError("--background-fraction must be between 0 and 1")
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
                    {
                        "name": UPSTREAM_NAME,
                        "base_url": upstream_url,
                        "resume": self.resume_mode,
                        "apis": SIMULATOR_APIS,
                    }
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
    api: str = "chat"
    background: int = 0
    """Responses requests sent in background mode."""
    reattached: int = 0
    """Background requests whose stream was reattached at least once (simulator's log)."""
    reattached_exact: int = 0
    reattach_requests: int = 0
    """GET /v1/responses/{id}?stream=true requests the simulator served (reattach attempts)."""
    samples: list[RecoveredSample] = field(default_factory=list)

    @property
    def exact_pct(self) -> float:
        done = self.stats.done
        return 100.0 * self.stats.exact / done if done else 0.0

    @property
    def upstream_attempts(self) -> int:
        if self.api == "chat":
            return self.simulator.chat_requests
        return self.simulator.requests_by_api[self.api]

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


@dataclass(frozen=True)
class Attempt:
    """One upstream attempt of a conversation, as the simulator recorded it."""

    kind: str
    """normal, prefill, prefix, instruct, or reattach (Responses background)."""
    fault: str | None
    partial: str | None = None
    """A continuation's partial answer (the assistant turn intact sent)."""
    starting_after: int | None = None
    """A reattach's starting_after."""

    def describe(self, number: int) -> str:
        line = f"attempt {number}: {self.kind} fault={self.fault or 'none'}"
        if self.partial is not None:
            line += f" partial={len(self.partial)} chars ending {self.partial[-40:]!r}"
        if self.starting_after is not None:
            line += f" starting_after={self.starting_after}"
        return line


def attempts_of(
    sim: SimulatedUpstream, conversation: Conversation, response_id: str | None = None
) -> list[Attempt]:
    """The simulator's record of every attempt of one conversation (newest 1000 kept):
    the requests whose body carries its tag, and the reattaches to `response_id`."""
    tag = f"(conversation {conversation.request_id})"
    attempts = []
    for record in sim.stats.recent_requests:
        body = record.body
        if record.kind == "reattach":
            if response_id is None or body.get("response_id") != response_id:
                continue
            after = body.get("starting_after")
            attempts.append(
                Attempt("reattach", record.fault, None, after if isinstance(after, int) else None)
            )
        elif _mentions(body, tag):
            partial = _partial(body) if record.kind != "normal" else None
            attempts.append(Attempt(record.kind, record.fault, partial))
    return attempts


def _attempt_log(
    sim: SimulatedUpstream, conversation: Conversation, response_id: str | None = None
) -> list[str]:
    return [
        attempt.describe(number)
        for number, attempt in enumerate(attempts_of(sim, conversation, response_id), start=1)
    ]


def _turns(body: Any) -> list[Any]:
    """The turns of a request body: chat/Messages `messages`, Responses `input` items."""
    turns = body.get("messages")
    if turns is None:
        turns = body.get("input")
    if isinstance(turns, str):
        return [{"role": "user", "content": turns}]
    return turns if isinstance(turns, list) else []


def _text(content: Any) -> str:
    """A message's text: a string, or the text of its blocks / content parts."""
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "output_text", "input_text")
        )
    return str(content or "")


def _mentions(body: Any, tag: str) -> bool:
    for message in _turns(body):
        if isinstance(message, dict) and tag in _text(message.get("content")):
            return True
    return False


def _partial(body: Any) -> str | None:
    """The assistant turn a continuation carries (the last one in the body)."""
    for message in reversed(_turns(body)):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return _text(message.get("content"))
    return None


def request_body(conversation: Conversation) -> dict[str, Any]:
    """The request body the load generator sends for `conversation`, in its API's shape."""
    return conversation.body()


def expected_for(sim: SimulatedUpstream, conversation: Conversation) -> ExpectedAnswer:
    """The answer the simulator gives to `conversation`'s request uninterrupted, in the shape
    `judge` compares."""
    body = request_body(conversation)
    if conversation.api == "messages":
        return answer_of_message(sim.messages_api.expected(body))
    if conversation.api == "responses":
        return answer_of_response(sim.responses_api.expected(body))
    return sim.expected_answer(body)


@dataclass
class RecoveredSample:
    """A stream that broke upstream and reached the app byte-exact, as the SDK gave it."""

    conversation: Conversation
    recovery: str
    """The kind of the attempt that recovered it: instruct, prefill, prefix or reattach."""
    attempts: list[Attempt]
    events: list[dict[str, Any]]
    relay: str = ""


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
    if opts.api not in APIS:
        raise ValueError(f"run_chaos runs one API ({', '.join(APIS)}), not {opts.api!r}")
    outcomes = RelayOutcomes(telemetry, keep_summaries=max(5_000, opts.streams))
    # The load generator judges against the default (prose) answer; each request is judged
    # again here against the answer the simulator gives for the request's own style.
    overall = LoadStats(max_anomalies=0, seed=opts.seed)
    by_style: dict[str, StyleTally] = {}
    samples: dict[str, list[RecoveredSample]] = {}
    background = Counter[str]()

    def on_result(result: RequestResult) -> None:
        conversation, seen = result.conversation, result.observation
        expected = expected_for(sim, conversation)
        label = TOOLS_LABEL if expected.tool_calls else expected.style or "prose"
        judged = dataclasses.replace(result, judgement=judge(expected, seen), anomaly=None)
        overall.record(judged)
        tally = by_style.setdefault(
            label, StyleTally(LoadStats(max_anomalies=opts.show_anomalies, seed=opts.seed))
        )
        anomaly = tally.stats.record(judged)
        exact = judged.judgement.verdict is Verdict.EXACT
        if exact:
            tally.exact_ids.add(conversation.request_id)
        # Now, while the simulator still has this conversation's attempts in its log.
        if anomaly is not None:
            anomaly.notes += _attempt_log(sim, conversation, seen.response_id)
        if conversation.background:
            background["requests"] += 1
            kinds = [a.kind for a in attempts_of(sim, conversation, seen.response_id)]
            if "reattach" in kinds:
                background["reattached"] += 1
                background["reattached_exact"] += exact
        if exact and seen.events and opts.show_recovered > 0:
            _keep_sample(opts, sim, conversation, seen.events, seen.response_id, samples)

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
                    api=opts.api,
                    background_fraction=opts.background_fraction,
                ),
                request_timeout=60.0,
                max_anomalies=0,
                record_events=opts.show_recovered > 0,
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
    kept = [sample for kind in sorted(samples) for sample in samples[kind]]
    for sample in kept:
        summary = outcomes.summary_for(sample.conversation.request_id)
        if summary is not None:
            kinds = ", ".join(k.value for k in summary.interruptions) or "none"
            sample.relay = (
                f"relay: outcome={summary.outcome.value} attempts={summary.attempts} "
                f"resumes={summary.resumes} interruptions=[{kinds}]"
            )
    stats = sim.stats
    return ChaosReport(
        opts,
        overall,
        outcomes,
        stats,
        wall,
        by_style=by_style,
        issued=load.stats.issued,
        recovered_exact=recovered,
        api=opts.api,
        background=background["requests"],
        reattached=background["reattached"],
        reattached_exact=background["reattached_exact"],
        # Every Responses generation request counts a kind; a reattach GET does not.
        reattach_requests=(
            stats.requests_by_api["responses"] - sum(stats.requests_by_kind.values())
            if opts.api == "responses"
            else 0
        ),
        samples=kept,
    )


RECOVERY_KINDS = ("prefill", "prefix", "instruct", "reattach")


def _keep_sample(
    opts: ChaosOptions,
    sim: SimulatedUpstream,
    conversation: Conversation,
    events: list[Any],
    response_id: str | None,
    samples: dict[str, list[RecoveredSample]],
) -> None:
    """Keep `conversation` as a recovered sample if it is a plain text answer (no tools, no
    token cap) that broke well into its text, and its kind of recovery still needs one."""
    if not conversation.stream or conversation.tools or conversation.max_tokens is not None:
        return
    attempts = attempts_of(sim, conversation, response_id)
    recovery = next(
        (
            a
            for a in reversed(attempts)
            if a.kind in RECOVERY_KINDS
            and (len(a.partial or "") >= 40 or (a.starting_after or -1) >= 10)
        ),
        None,
    )
    if recovery is None or len(samples.get(recovery.kind, ())) >= opts.show_recovered:
        return
    dumped = [_dump_event(event) for event in events]
    samples.setdefault(recovery.kind, []).append(
        RecoveredSample(conversation, recovery.kind, attempts, dumped)
    )


# What the anthropic SDK's MessageStream adds to the wire events it yields (snapshots).
_SDK_ADDED = {"content_block_stop": "content_block", "message_stop": "message"}


def _dump_event(event: Any) -> dict[str, Any]:
    """An SDK event as the fields the wire carried."""
    dump = getattr(event, "model_dump", None)
    if dump is None:
        return {"repr": repr(event)}
    dumped: dict[str, Any] = dump(mode="json", exclude_unset=True)
    added = _SDK_ADDED.get(str(dumped.get("type")))
    if added is not None:
        dumped.pop(added, None)
    return dumped


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
    attempts = r.upstream_attempts
    quirks = (
        f"instruct quirks: repeat {o.repeat_prob}, whitespace variation "
        f"{o.whitespace_variation_prob}, restart {o.restart_prob}, paraphrase "
        f"{o.paraphrase_prob}"
        if o.resume_mode == "instruct"
        else f"continues exactly (prefill echo {o.prefill_echo_prob})"
    )
    api = {
        "chat": "chat completions (openai SDK)",
        "messages": "Anthropic Messages (anthropic SDK)",
        "responses": "OpenAI Responses (openai SDK)"
        + (
            f", {o.background_fraction:.0%} of streams in background mode"
            if o.background_fraction
            else ""
        ),
    }[r.api]
    lines = [
        f"intact chaos run: {o.streams} streams, {o.concurrency} concurrent, seed {o.seed}",
        *([f"  api: {api}"] if r.api != "chat" else []),
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
        *(
            [
                f"  background           {r.background} requests, {r.reattached} reattached "
                f"({r.reattached_exact} byte-exact), {r.reattach_requests} reattach requests"
            ]
            if r.api == "responses"
            else []
        ),
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
    for sample in r.samples:
        lines += ["", *render_sample(sample)]
    lines += ["", "acceptance"]
    for name, ok, value in r.checks():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    lines.append(f"RESULT: {'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def _event_text(event: dict[str, Any]) -> str:
    """The answer text one event carries (chat chunk, Messages or Responses event)."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta") or {}
        return str(delta.get("text") or "") if delta.get("type") == "text_delta" else ""
    if kind == "response.output_text.delta":
        return str(event.get("delta") or "")
    return "".join(
        str((choice.get("delta") or {}).get("content") or "")
        for choice in event.get("choices") or ()
    )


def _trim(value: Any, depth: int = 0) -> Any:
    """An event made short enough to read: long strings cut, big objects summarised."""
    if isinstance(value, str):
        return value if len(value) <= 40 else value[:24] + f"…(+{len(value) - 24})"
    if isinstance(value, list):
        if depth >= 2 and value:
            return f"[{len(value)} items]"
        return [_trim(v, depth + 1) for v in value[:3]] + (
            [f"…{len(value) - 3} more"] if len(value) > 3 else []
        )
    if isinstance(value, dict):
        if depth >= 1 and len(value) > 8:
            keep = {k: value[k] for k in ("id", "type", "status", "model") if k in value}
            return {**_trim(keep, depth + 1), "…": f"{len(value) - len(keep)} more keys"}
        return {k: _trim(v, depth + 1) for k, v in value.items() if v not in (None, [], {})}
    return value


def render_sample(sample: RecoveredSample, context: int = 4) -> list[str]:
    """A recovered stream as the app received it: every event the SDK yielded, one line
    each, trimmed, with the deltas far from where the upstream broke elided."""
    c = sample.conversation
    lines = [f"recovered stream ({c.api}, {sample.recovery}): {c.describe()}"]
    lines.append(f"  prompt: {c.last_user_text()!r}")
    lines += ["  " + a.describe(n) for n, a in enumerate(sample.attempts, start=1)]
    if sample.relay:
        lines.append("  " + sample.relay)
    events = sample.events
    # Where the app's answer stood when each attempt after the first took over.
    seams: set[int] = set()
    for attempt in sample.attempts[1:]:
        if attempt.starting_after is not None:
            for i, event in enumerate(events):
                if event.get("sequence_number") == attempt.starting_after:
                    seams.add(i)
        elif attempt.partial:
            chars = 0
            for i, event in enumerate(events):
                chars += len(_event_text(event))
                if chars >= len(attempt.partial.rstrip()):
                    seams.add(i)
                    break
    keep = set(range(min(len(events), context + 2))) | set(
        range(max(0, len(events) - context - 1), len(events))
    )
    for seam in seams:
        keep |= set(range(max(0, seam - context), min(len(events), seam + context + 2)))
    lines.append(f"  the app received {len(events)} events:")
    skipped = 0
    for i, event in enumerate(events):
        if i not in keep:
            skipped += 1
            continue
        if skipped:
            lines.append(f"    … {skipped} events …")
            skipped = 0
        data = orjson.dumps(_trim(event)).decode()
        mark = (
            "   <- the upstream broke after this event; the next attempt goes on"
            if i in seams
            else ""
        )
        lines.append(f"    {i:>4} {data}{mark}")
    if skipped:
        lines.append(f"    … {skipped} events …")
    return lines


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
    p.add_argument(
        "--api",
        choices=API_CHOICES,
        default=d.api,
        help="the API the app speaks: chat (default), messages (anthropic SDK), responses, "
        "or all three one after another",
    )
    p.add_argument(
        "--background-fraction",
        type=float,
        default=d.background_fraction,
        help="responses: share of streaming requests in background mode (reattached)",
    )
    p.add_argument(
        "--show-recovered",
        type=int,
        default=d.show_recovered,
        metavar="N",
        help="print N recovered streams per recovery kind as the app received them",
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
        api=a.api,
        background_fraction=a.background_fraction,
        show_recovered=a.show_recovered,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        opts.validate()
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    results: list[tuple[str, ChaosReport]] = []
    for api in opts.apis():
        if results:
            print(flush=True)
        report = asyncio.run(run_chaos(dataclasses.replace(opts, api=api), with_telemetry=True))
        print(report_text(report), flush=True)
        results.append((api, report))
    if len(results) > 1:
        print(
            "\nall APIs: "
            + ", ".join(
                f"{api} {'PASS' if r.passed else 'FAIL'} ({r.exact_pct:.2f}% byte-exact, "
                f"{r.stats.silent} silent, {r.stats.garbled} garbled)"
                for api, r in results
            ),
            flush=True,
        )
    return 0 if all(r.passed for _, r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
