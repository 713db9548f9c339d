"""Failover between upstreams: which upstream serves a request when another is down, open or
does not serve the model, and how attempts are shared between them."""

from __future__ import annotations

from pathlib import Path

from intact.resilience.breaker import BreakerState
from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)


async def test_unreachable_primary_fails_over_to_the_secondary_with_the_exact_answer(
    tmp_path: Path,
) -> None:
    async with fast_sim() as gone:
        dead_url = gone.base_url  # nothing listens here once the block ends
    async with (
        fast_sim() as secondary,
        daemon_for(
            tmp_path,
            [],
            upstreams=[
                {"name": "primary", "base_url": dead_url},
                {"name": "secondary", "base_url": secondary.base_url},
            ],
        ) as d,
    ):
        seen = await stream_chat(sdk(d.socket_path))
        assert secondary.stats.chat_requests == 1
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.roles == 1


async def test_failing_primary_gets_its_share_of_attempts_then_the_secondary_serves(
    tmp_path: Path,
) -> None:
    # max_attempts 6 over two upstreams: three on the primary, then the secondary.
    async with (
        fast_sim() as primary,
        fast_sim() as secondary,
        daemon_for(tmp_path, [primary, secondary], retry={"max_attempts": 6}) as d,
    ):
        primary.set_mode("down")
        seen = await stream_chat(sdk(d.socket_path))
        assert primary.stats.chat_requests == 3
        assert secondary.stats.chat_requests == 1
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.roles == 1


async def test_primary_with_an_open_breaker_is_skipped_without_a_request(tmp_path: Path) -> None:
    breaker = {"minimum_calls": 3, "failure_rate_threshold": 0.5, "open_duration": 30.0}
    async with (
        fast_sim() as primary,
        fast_sim() as secondary,
        daemon_for(tmp_path, [primary, secondary], retry={"max_attempts": 6}, breaker=breaker) as d,
    ):
        primary.set_mode("down")
        await stream_chat(sdk(d.socket_path))  # three failures on the primary open it
        assert d.relay.upstreams[0].breaker.state is BreakerState.OPEN
        primary_before = primary.stats.chat_requests
        seen = await stream_chat(sdk(d.socket_path))
        assert primary.stats.chat_requests == primary_before
        assert secondary.stats.chat_requests == 2
    assert seen.error is None
    assert seen.text == EXPECTED.content


async def test_each_model_goes_to_the_upstream_that_serves_it(tmp_path: Path) -> None:
    async with (
        fast_sim() as one,
        fast_sim() as two,
        daemon_for(
            tmp_path,
            [],
            upstreams=[
                {"name": "one", "base_url": one.base_url, "models": ["sim-1"]},
                {"name": "two", "base_url": two.base_url, "models": ["sim-2"]},
            ],
        ) as d,
    ):
        client = sdk(d.socket_path)
        via_two = await stream_chat(client, model="sim-2")
        assert (one.stats.chat_requests, two.stats.chat_requests) == (0, 1)
        via_one = await stream_chat(client, model="sim-1")
        assert (one.stats.chat_requests, two.stats.chat_requests) == (1, 1)
    assert via_two.text == via_one.text == EXPECTED.content
    assert two.stats.recent_requests[-1].body["model"] == "sim-2"


async def test_failover_never_sends_a_model_to_an_upstream_that_does_not_serve_it(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as one,
        fast_sim() as two,
        daemon_for(
            tmp_path,
            [],
            retry={"max_attempts": 4},
            upstreams=[
                {"name": "one", "base_url": one.base_url, "models": ["sim-1"]},
                {"name": "two", "base_url": two.base_url, "models": ["sim-2"]},
            ],
        ) as d,
    ):
        one.set_mode("down")
        seen = await stream_chat(sdk(d.socket_path), model="sim-1")
        assert one.stats.chat_requests == 4
        assert two.stats.chat_requests == 0
    assert getattr(seen.error, "status_code", None) == 503  # the upstream's own 503
    assert seen.text == ""


async def test_shared_model_fails_over_while_a_dedicated_model_stays_put(tmp_path: Path) -> None:
    async with (
        fast_sim() as general,
        fast_sim() as backup,
        daemon_for(
            tmp_path,
            [],
            retry={"max_attempts": 2},
            upstreams=[
                {"name": "general", "base_url": general.base_url},
                {"name": "backup", "base_url": backup.base_url, "models": ["sim-1"]},
            ],
        ) as d,
    ):
        general.set_mode("down")
        client = sdk(d.socket_path)
        shared = await stream_chat(client, model="sim-1")
        dedicated = await stream_chat(client, model="sim-2")
        assert backup.stats.chat_requests == 1
        assert [r.body["model"] for r in backup.stats.recent_requests] == ["sim-1"]
    assert shared.text == EXPECTED.content
    assert getattr(dedicated.error, "status_code", None) == 503


async def test_retry_after_longer_than_allowed_moves_to_the_next_upstream(tmp_path: Path) -> None:
    async with (
        fast_sim(retry_after=120.0) as primary,
        fast_sim() as secondary,
        daemon_for(tmp_path, [primary, secondary]) as d,
    ):
        primary.schedule_faults(["http_429"])
        seen = await stream_chat(sdk(d.socket_path))
        assert primary.stats.chat_requests == 1
        assert secondary.stats.chat_requests == 1
    assert seen.error is None
    assert seen.text == EXPECTED.content


async def test_upstream_without_a_free_stream_slot_hands_the_request_on(tmp_path: Path) -> None:
    import asyncio

    async with (
        fast_sim(tok_per_s=20.0) as primary,
        fast_sim() as secondary,
        daemon_for(
            tmp_path,
            [],
            upstreams=[
                {
                    "name": "primary",
                    "base_url": primary.base_url,
                    "max_concurrent_streams": 1,
                    "max_queued": 0,
                },
                {"name": "secondary", "base_url": secondary.base_url},
            ],
        ) as d,
    ):
        slow = asyncio.create_task(stream_chat(sdk(d.socket_path)))
        while primary.stats.active_streams == 0:
            await asyncio.sleep(0.01)
        seen = await stream_chat(sdk(d.socket_path))
        assert secondary.stats.chat_requests == 1
        slow.cancel()
    assert seen.error is None
    assert seen.text == EXPECTED.content
