"""Metrics: counters match a scripted run exactly, in the SDK's own view and in /metrics as
Prometheus scrapes it; the breaker gauge follows an upstream going down and coming back."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from intact.resilience.breaker import BreakerState
from intact.simulator import SimulatedUpstream, expected_answer
from intact.telemetry.otel import BreakerStates
from telemetry.helpers import (
    MESSAGES,
    app_client,
    daemon_config,
    scrape,
    scraped,
    serving,
    stream_chat,
)

pytestmark = pytest.mark.timeout(20)

# One app request per entry: the faults its attempts meet, in order, and how it ends.
SCRIPT: list[tuple[list[str], str]] = [
    (["none"], "completed"),
    (["reset@5", "none"], "recovered"),
    (["stall@3", "none"], "recovered"),
    (["error_event@8", "none"], "recovered"),
    (["http_500", "http_500"], "failed"),  # max_attempts 2: nothing left after the second
]


def content_chunks_before(fault: str) -> int:
    """Content chunks the app got before a mid-stream fault at position N (the role chunk
    is one of the N)."""
    return int(fault.partition("@")[2]) - 1


async def test_counters_match_a_scripted_run(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url, retry={"max_attempts": 2})
    sinks = start_sinks(cfg)
    recovered_tokens = 0
    async with serving(cfg, sinks) as d:
        client = app_client(d.socket_path)
        for faults, outcome in SCRIPT:
            sim.schedule_faults(faults)
            got = await stream_chat(client)
            if outcome == "failed":
                assert got.error is not None
                continue
            assert got.error is None
            assert got.text == expected_answer(MESSAGES).content
            if outcome == "recovered":
                recovered_tokens += len(got.contents) - content_chunks_before(faults[0])
        samples = await scrape(d.admin_url)

    streams = {("completed", "sim", "sim-1"): 1, ("recovered", "sim", "sim-1"): 3,
               ("failed", "sim", "sim-1"): 1}  # fmt: skip
    interruptions = {("reset", "sim"): 1, ("stall", "sim"): 1, ("error_event", "sim"): 1,
                     ("http_5xx", "sim"): 2}  # fmt: skip
    attempts = {
        ("sim", "initial", "success"): 1, ("sim", "initial", "reset"): 1,
        ("sim", "initial", "stall"): 1, ("sim", "initial", "error_event"): 1,
        ("sim", "resume", "success"): 3, ("sim", "initial", "http_5xx"): 1,
        ("sim", "retry", "http_5xx"): 1,
    }  # fmt: skip
    assert recovered_tokens > 0

    # The SDK's view (what OTLP would carry).
    assert sinks.counts("intact.streams", "outcome", "upstream", "model") == streams
    assert sinks.counts("intact.interruptions", "kind", "upstream") == interruptions
    assert sinks.counts("intact.attempts", "upstream", "reason", "result") == attempts
    assert sinks.counts("intact.recovered_tokens", "upstream") == {("sim",): recovered_tokens}
    assert sinks.counts("intact.stream.duration", "outcome") == {
        ("completed",): 1, ("recovered",): 3, ("failed",): 1,
    }  # fmt: skip
    assert sinks.counts("intact.recovery.duration", "upstream") == {("sim",): 3}
    assert sinks.counts("gen_ai.client.operation.duration", "error.type") == {
        (None,): 4, ("reset",): 1, ("stall",): 1, ("error_event",): 1, ("http_5xx",): 2,
    }  # fmt: skip
    assert sinks.counts("gen_ai.client.operation.time_to_first_chunk") == {(): 7}
    assert sinks.counts("intact.active_streams") == {}
    assert sinks.counts("intact.retry_budget.exhausted") == {}
    # Chat completions from a peer that is no configured app: api chat, app other.
    for name in ("intact.streams", "intact.interruptions", "intact.attempts",
                 "intact.recovered_tokens", "intact.stream.duration", "intact.recovery.duration",
                 "gen_ai.client.operation.duration", "gen_ai.client.token.usage",
                 "gen_ai.client.operation.time_to_first_chunk"):  # fmt: skip
        assert set(sinks.counts(name, "api", "app")) == {("chat", "other")}, name

    # The same facts as Prometheus scrapes them from the admin listener.
    assert scraped(samples, "intact_streams_total", "outcome", "upstream", "model") == streams
    assert scraped(samples, "intact_interruptions_total", "kind", "upstream") == interruptions
    assert scraped(samples, "intact_attempts_total", "upstream", "reason", "result") == attempts
    assert scraped(samples, "intact_recovered_tokens_total", "upstream") == {
        ("sim",): recovered_tokens
    }
    assert scraped(samples, "intact_stream_duration_seconds_count", "outcome") == {
        ("completed",): 1, ("recovered",): 3, ("failed",): 1,
    }  # fmt: skip
    assert scraped(samples, "intact_recovery_duration_seconds_count") == {(): 3}
    assert scraped(samples, "gen_ai_client_operation_duration_seconds_count") == {(): 9}
    assert scraped(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == {(): 7}
    assert scraped(samples, "intact_active_streams") == {}
    assert scraped(samples, "intact_breaker_state", "upstream") == {}  # 0 = closed
    assert ("intact_breaker_state", frozenset({("upstream", "sim")})) in samples
    # Rare-event counters exist at 0 from the start, so increase() sees their first event.
    assert samples[("intact_retry_budget_exhausted_total", frozenset({("upstream", "sim")}))] == 0
    for to in ("closed", "half_open", "open"):
        key = ("intact_breaker_transitions_total", frozenset({("upstream", "sim"), ("to", to)}))
        assert samples[key] == 0


async def test_genai_histograms_use_the_semantic_convention_buckets(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url)
    sinks = start_sinks(cfg)
    async with serving(cfg, sinks) as d:
        assert (await stream_chat(app_client(d.socket_path))).error is None
        samples = await scrape(d.admin_url)
    buckets = {dict(labels)["le"] for (name, labels), _ in samples.items()
               if name == "gen_ai_client_operation_duration_seconds_bucket"}  # fmt: skip
    assert {"0.01", "0.64", "81.92", "+Inf"} <= buckets
    assert len(buckets) == 15
    token_buckets = {dict(labels)["le"] for (name, labels), _ in samples.items()
                     if name == "gen_ai_client_token_usage_bucket"}  # fmt: skip
    assert {"1", "4", "67108864", "+Inf"} <= token_buckets


async def test_model_label_is_capped_per_upstream(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url, telemetry={"max_model_labels": 2})
    sinks = start_sinks(cfg)
    async with serving(cfg, sinks) as d:
        client = app_client(d.socket_path)
        for model in ("m-a", "m-b", "m-c", "m-d", "m-a"):
            assert (await stream_chat(client, model=model)).error is None
    assert sinks.counts("intact.streams", "model") == {("m-a",): 2, ("m-b",): 1, ("other",): 2}


async def test_breaker_gauge_follows_the_upstream_down_and_up_again(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(
        tmp_path, sim.base_url,
        retry={"max_attempts": 2},
        breaker={"minimum_calls": 4, "window": 5.0, "open_duration": 0.5,
                 "half_open_probes": 2},
    )  # fmt: skip
    sinks = start_sinks(cfg)

    def gauge() -> dict[str, float]:
        return {attrs["upstream"]: value for attrs, value in sinks.metric("intact.breaker.state")}

    def transitions() -> dict[tuple[Any, ...], float]:
        return sinks.counts("intact.breaker.transitions", "to")

    async with serving(cfg, sinks) as d:
        client = app_client(d.socket_path)
        assert gauge() == {"sim": 0}

        sim.set_mode("down")
        for _ in range(2):  # 2 requests x 2 attempts = 4 failed calls: opens
            assert (await stream_chat(client)).error is not None
        assert gauge() == {"sim": 2}
        samples = await scrape(d.admin_url)
        assert samples[("intact_breaker_state", frozenset({("upstream", "sim")}))] == 2
        assert transitions() == {("open",): 1}
        refused = await stream_chat(client)  # fails fast, no upstream call
        assert refused.error is not None
        assert getattr(refused.error, "status_code", None) == 503

        sim.set_mode("normal")
        await asyncio.sleep(0.55)
        assert gauge() == {"sim": 1}  # reading the state lets the open period end
        samples = await scrape(d.admin_url)
        assert samples[("intact_breaker_state", frozenset({("upstream", "sim")}))] == 1

        for _ in range(2):  # the half-open probes succeed: closes
            assert (await stream_chat(client)).error is None
        assert gauge() == {"sim": 0}
        samples = await scrape(d.admin_url)
        assert samples[("intact_breaker_state", frozenset({("upstream", "sim")}))] == 0

    assert transitions() == {("open",): 1, ("half_open",): 1, ("closed",): 1}
    assert sinks.counts("intact.streams", "outcome") == {
        ("failed",): 3, ("completed",): 2,
    }  # fmt: skip
    events = [(line["event"], line["level"], line.get("from"), line.get("to"))
              for line in sinks.log_lines() if line["event"].startswith("breaker_")]  # fmt: skip
    assert events == [
        ("breaker_opened", "error", "closed", "open"),
        ("breaker_half_open", "warning", "open", "half_open"),
        ("breaker_closed", "info", "half_open", "closed"),
    ]


async def test_breaker_states_are_read_on_the_event_loop_when_collected_from_a_thread() -> None:
    states = BreakerStates()
    readers: list[int] = []

    def source() -> dict[str, BreakerState]:
        readers.append(threading.get_ident())
        return {"primary": BreakerState.OPEN}

    states.attach(source)  # by the daemon, on its loop
    readers.clear()
    got = await asyncio.to_thread(lambda: list(states.read()))  # like the OTLP reader thread
    assert got == [("primary", BreakerState.OPEN)]
    assert readers == [threading.get_ident()]


def test_breaker_states_fall_back_to_the_last_transition_when_the_loop_cannot_answer() -> None:
    loop = asyncio.new_event_loop()
    states = BreakerStates(read_timeout=0.05)

    async def attach() -> None:
        states.attach(lambda: {"primary": BreakerState.CLOSED})

    loop.run_until_complete(attach())
    states.note("primary", BreakerState.OPEN)  # the transition callback
    started = time.monotonic()
    assert list(states.read()) == [("primary", BreakerState.OPEN)]  # loop not running
    assert time.monotonic() - started < 0.5
    loop.close()
    assert list(states.read()) == [("primary", BreakerState.OPEN)]  # loop gone


def test_stream_counters_of_configured_models_start_at_zero(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from intact.config import build_config
    from intact.telemetry.runtime import start_telemetry

    cfg = build_config(
        {
            "server": {"socket": str(tmp_path / "s.sock")},
            "upstreams": [{"name": "vllm", "base_url": "http://127.0.0.1:9/v1",
                           "models": ["llama"]}],
        }
    )  # fmt: skip
    rt = start_telemetry(cfg, log_stream=io.StringIO())
    try:
        text = generate_latest(rt.registry).decode()
    finally:
        rt.shutdown()
    for outcome in ("completed", "recovered", "failed", "rejected", "cancelled"):
        for api in ("chat", "messages", "responses"):  # no [[apps]]: every peer is "other"
            series = (
                f'intact_streams_total{{api="{api}",app="other",model="llama",'
                f'outcome="{outcome}",served_model="llama",upstream="vllm"}}'
            )
            assert f"{series} 0.0" in text
    assert 'api="passthrough"' not in text.partition("intact_streams_total")[2]
