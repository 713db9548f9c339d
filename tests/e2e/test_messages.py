"""Anthropic Messages over the socket with the official ``anthropic`` SDK: every fault kind
at every position gives the exact answer the upstream would have sent uninterrupted, or an
error the SDK raises; never a message that ends quietly short."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import pytest

from support import anthropic_sdk, daemon_for, fast_sim, raw_client

pytestmark = pytest.mark.timeout(120)

PROMPT = [{"role": "user", "content": "Explain how a lighthouse keeps ships safe at night."}]


@dataclass
class Got:
    """What the app saw of one streamed message."""

    text: str = ""
    events: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # content_block_start indexes
    stop_reason: str | None = None
    output_tokens: int | None = None
    error: BaseException | None = None


async def stream_message(client: anthropic.AsyncAnthropic, **kw: Any) -> Got:
    got = Got()
    try:
        async with client.messages.stream(
            model=kw.pop("model", "sim-1"),
            max_tokens=kw.pop("max_tokens", 200),
            messages=kw.pop("messages", PROMPT),
            **kw,
        ) as stream:
            async for event in stream:
                got.events.append(event.type)
                if event.type == "content_block_start":
                    got.starts.append(event.index)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    got.text += event.delta.text
                elif event.type == "message_delta":
                    got.stop_reason = event.delta.stop_reason
                    got.output_tokens = event.usage.output_tokens
    except anthropic.APIError as exc:
        got.error = exc
    return got


async def direct_text(base_url: str, **kw: Any) -> str:
    """The uninterrupted answer, straight from the simulator."""
    client = anthropic.AsyncAnthropic(
        base_url=base_url.removesuffix("/v1"), api_key="unused", max_retries=0
    )
    message = await client.messages.create(
        model="sim-1", max_tokens=kw.get("max_tokens", 200), messages=PROMPT
    )
    return "".join(block.text for block in message.content if block.type == "text")


async def test_a_plain_message_streams_and_collects(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        expected = await direct_text(sim.base_url)
        client = anthropic_sdk(d.socket_path)
        got = await stream_message(client)
        whole = await client.messages.create(model="sim-1", max_tokens=200, messages=PROMPT)
    assert got.error is None
    assert got.text == expected
    assert got.events[0] == "message_start"
    assert got.events[-1] == "message_stop"
    assert got.stop_reason == "end_turn"
    assert whole.content[0].type == "text" and whole.content[0].text == expected
    assert whole.stop_reason == "end_turn"


@pytest.mark.parametrize(
    "fault",
    [
        "reset@0",
        "reset@1",
        "reset@3",
        "reset@mid",
        "reset@last",
        "truncate@mid",
        "stall@mid",
        "error_event@0",
        "error_event@mid",
        "http_500",
        "http_503",
        "http_529",
        "http_429",
        "connect_drop",
    ],
)
@pytest.mark.parametrize("mode", ["instruct", "prefill"])
async def test_every_fault_gives_the_exact_answer(tmp_path: Path, fault: str, mode: str) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "resume": mode, "apis": ["messages"]}]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            await check_fault(sim, d.socket_path, fault)


async def check_fault(sim: Any, socket_path: str, fault: str) -> None:
    if True:
        expected = await direct_text(sim.base_url)
        sim.schedule_faults([fault])
        got = await stream_message(anthropic_sdk(socket_path))
        sim.schedule_faults([fault])
        whole = await anthropic_sdk(socket_path).messages.create(
            model="sim-1", max_tokens=200, messages=PROMPT
        )
    assert got.error is None, got.error
    assert got.text == expected
    assert got.events.count("message_start") == 1
    assert got.events[-1] == "message_stop"
    assert got.starts == [0]
    assert got.stop_reason == "end_turn"
    assert whole.content[0].text == expected  # type: ignore[union-attr]


async def test_a_lost_stream_ends_with_an_error_the_sdk_raises(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, retry={"max_attempts": 2}) as d,
        raw_client(d.socket_path) as raw,
    ):
        sim.schedule_faults(["reset@mid", "reset@1"])
        got = await stream_message(anthropic_sdk(d.socket_path))
        sim.schedule_faults(["reset@mid", "reset@1"])
        body = {"model": "sim-1", "max_tokens": 200, "messages": PROMPT, "stream": True}
        wire = (await raw.post("/v1/messages", json=body)).content
    assert isinstance(got.error, anthropic.APIError)
    assert got.text  # the app had part of it...
    assert "message_stop" not in got.events  # ...and was never told it was whole
    assert b"event: message_stop" not in wire
    assert wire.rstrip().split(b"\n")[-2] == b"event: error"


async def test_errors_are_shaped_for_the_anthropic_sdk(tmp_path: Path) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "apis": ["messages"], "models": ["sim-1"]}]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d, raw_client(d.socket_path) as raw:
            no_limit = await raw.post("/v1/messages", json={"model": "sim-1", "messages": PROMPT})
            not_json = await raw.post("/v1/messages", content=b"{not json")
            client = anthropic_sdk(d.socket_path)
            with pytest.raises(anthropic.NotFoundError) as missing:
                await client.messages.create(model="no-such-model", max_tokens=5, messages=PROMPT)
    for resp in (no_limit, not_json):
        assert resp.status_code == 400
        assert resp.json()["type"] == "error"
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in no_limit.json()["error"]["message"]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_an_upstream_of_kind_anthropic_gets_its_key_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    body = {"model": "sim-1", "max_tokens": 20, "messages": PROMPT}
    async with fast_sim() as sim:
        ups = [
            {
                "name": "claude",
                "kind": "anthropic",
                "base_url": sim.base_url,
                "api_key_env": "TEST_ANTHROPIC_KEY",
            }
        ]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            got = await stream_message(anthropic_sdk(d.socket_path))
            async with raw_client(d.socket_path) as raw:
                plain = await raw.post("/v1/messages", json=body)
                chat = await raw.post("/v1/chat/completions", json={**body, "messages": PROMPT})
        headers = [r.headers for r in sim.stats.http_requests]
    assert got.error is None and got.text
    assert plain.status_code == 200
    for sent in headers:
        assert sent["x-api-key"] == "sk-ant-test"
        assert "authorization" not in {k.lower() for k in sent}
    assert headers[0]["anthropic-version"] != "2023-06-01"  # the SDK's own, forwarded
    assert headers[1]["anthropic-version"] == "2023-06-01"  # intact's, for an app without
    assert chat.status_code == 404  # an anthropic upstream serves no chat completions
    assert "`chat` API" in chat.json()["error"]["message"]


KINDS = ("reset", "truncate", "error_event")
# Every request's first attempt breaks on purpose: a breaker would rightly open.
NO_BREAKER = {"minimum_calls": 10_000}


def event_count(text: str) -> int:
    return len(text.split()) + 8  # more than the stream's events: every position is reached


@pytest.mark.parametrize("mode", ["instruct", "prefill"])
async def test_messages_break_at_every_position(tmp_path: Path, mode: str) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "resume": mode, "apis": ["messages"]}]
        body = {"model": "sim-1", "max_tokens": 60, "messages": PROMPT}
        expected = sim.messages_api.expected(body).text
        outcomes: dict[str, int] = {"exact": 0, "explicit": 0}
        async with daemon_for(tmp_path, sim, upstreams=ups, breaker=NO_BREAKER) as d:
            client = anthropic_sdk(d.socket_path)
            for kind in KINDS:
                for position in range(event_count(expected)):
                    sim.schedule_faults([f"{kind}@{position}"])
                    got = await stream_message(client, max_tokens=60)
                    sim.clear_faults()
                    assert got.error is None, (kind, position, got.error)
                    assert got.text == expected, (kind, position)
                    assert got.events.count("message_start") == 1
                    assert got.events[-1] == "message_stop"
                    outcomes["exact"] += 1
    assert outcomes["exact"] == len(KINDS) * event_count(expected)


THINKING: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}


async def test_a_break_in_the_text_after_thinking_is_recovered_without_thinking_again(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim:
        ups = [
            {"name": "sim", "base_url": sim.base_url, "resume": "instruct", "apis": ["messages"]}
        ]
        body = {"model": "sim-1", "max_tokens": 2000, "messages": PROMPT, "thinking": THINKING}
        expected = sim.messages_api.expected(body)
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            sim.schedule_faults(["reset@last"])
            got = await stream_message(
                anthropic_sdk(d.socket_path), max_tokens=2000, thinking=THINKING
            )
    assert got.error is None, got.error
    assert got.text == expected.text
    assert got.starts == [0, 1]  # the thinking block, then the text block, once each


async def test_a_break_inside_thinking_ends_with_an_error_the_sdk_raises(tmp_path: Path) -> None:
    async with fast_sim() as sim:
        ups = [
            {"name": "sim", "base_url": sim.base_url, "resume": "instruct", "apis": ["messages"]}
        ]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            sim.schedule_faults(["reset@4"])  # message_start, block start, ping?, a thought
            got = await stream_message(
                anthropic_sdk(d.socket_path), max_tokens=2000, thinking=THINKING
            )
    if got.error is None:  # the break fell before anything reached the app: retried whole
        assert got.events[-1] == "message_stop"
    else:
        assert isinstance(got.error, anthropic.APIError)
        assert "thinking" in str(got.error)
        assert "message_stop" not in got.events


async def test_an_overloaded_upstream_fails_over_to_the_next_anthropic_upstream(
    tmp_path: Path,
) -> None:
    async with fast_sim() as down, fast_sim() as up:
        ups = [
            {"name": "first", "kind": "anthropic", "base_url": down.base_url},
            {"name": "second", "kind": "anthropic", "base_url": up.base_url},
        ]
        down.set_mode("down")  # 529 overloaded_error on every request
        async with daemon_for(tmp_path, [down, up], upstreams=ups) as d:
            got = await stream_message(anthropic_sdk(d.socket_path))
        expected = up.messages_api.expected(
            {"model": "sim-1", "max_tokens": 200, "messages": PROMPT}
        ).text
    assert got.error is None, got.error
    assert got.text == expected
    assert [r.path for r in down.stats.http_requests][:1] == ["/v1/messages"]
    assert up.stats.requests_by_api["messages"] == 1


async def test_an_overload_right_after_message_start_is_retried_even_with_resume_off(
    tmp_path: Path,
) -> None:
    """message_start comes before any token: intact holds it, so an in-band overloaded_error
    right after it costs the app nothing but a retry (no resume needed)."""
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        expected = sim.messages_api.expected(
            {"model": "sim-1", "max_tokens": 200, "messages": PROMPT}
        ).text
        sim.schedule_faults(["error_event@1"])
        client = anthropic_sdk(d.socket_path)
        got = await stream_message(client, extra_headers={"intact-resume": "off"})
    assert got.error is None, got.error
    assert got.text == expected
    assert got.events.count("message_start") == 1
