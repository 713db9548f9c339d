"""Real network faults on the path to the upstream: every stream still ends byte-exact
(possibly recovered) or with an explicit error, never silently truncated.

The simulated upstream runs in its own network namespace; intact runs here, in the root
namespace, and reaches it over a veth pair. The faults are the kernel's own: packets
delayed, lost and reordered; the upstream host answering with TCP resets mid-stream; the
upstream process killed with SIGKILL mid-stream and started again.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from netfaults.conftest import (
    BREAKERS,
    UPSTREAM_PORT,
    intact_in_root_ns,
    require_tool,
    start_simulator,
    unavailable,
)
from netfaults.netns import (
    Netem,
    NetnsUnavailable,
    UpstreamNamespace,
    apply_netem,
    netem_counts,
    run,
)
from netfaults.streams import Progress, Tally, run_streams, streams_in_background

NETEMS = {
    # What a bad mobile or intercontinental path does: TCP absorbs it, no stream stalls.
    "200ms": Netem(delay=0.2, jitter=0.05, loss=0.05, reorder=0.1),
    # Losses often enough that TCP's backoff outlasts stream.stall_timeout: resumes happen
    # over the same bad link.
    "lossy": Netem(delay=0.05, jitter=0.04, loss=0.25, reorder=0.25),
}


def assert_never_silently_broken(tally: Tally, streams: int) -> None:
    assert tally.streams == streams
    assert tally.silent_truncations == 0, tally.problems
    assert tally.garbled == 0, tally.problems
    assert tally.transport_errors == 0, tally.problems
    assert tally.exact + tally.recovered + tally.explicit_errors == streams


@pytest.mark.parametrize("netem", list(NETEMS))
async def test_delay_loss_and_reordering_leave_every_stream_exact_or_explicitly_failed(
    upstream_ns: UpstreamNamespace, tmp_path: Path, results: list[Tally], netem: str
) -> None:
    fault = NETEMS[netem]
    await start_simulator(upstream_ns)
    try:
        emulator = await apply_netem(upstream_ns, fault, UPSTREAM_PORT, seed=5)
    except NetnsUnavailable as exc:
        unavailable(str(exc))
    how = "tc" if emulator is None else "NFQUEUE"
    tally = Tally(
        f"netem {fault.delay * 1000:g}ms±{fault.jitter * 1000:g} loss "
        f"{fault.loss:.0%} reorder {fault.reorder:.0%} ({how})"
    )
    async with intact_in_root_ns(tmp_path, upstream_ns) as (daemon, outcomes):
        await run_streams(
            daemon.socket_path,
            outcomes,
            tally,
            count=24,
            concurrency=8,
            seed=11,
            progress=Progress(),
        )
    if emulator is not None:
        counts = await netem_counts(emulator)
        tally.notes.append("user-space netem: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        assert counts["dropped"] > 0 and counts["sent_at_once"] > 0 and counts["delayed"] > 0
    else:
        stats = run("tc", "-s", "qdisc", "show", "dev", upstream_ns.root_veth).stdout
        tally.notes.append("tc: " + " ".join(stats.split()))
        assert int(re.search(r"dropped (\d+)", stats).group(1)) > 0  # type: ignore[union-attr]
    results.append(tally)
    assert_never_silently_broken(tally, 24)
    assert tally.exact + tally.recovered > 0
    if netem == "lossy":
        assert sum(tally.interruptions.values()) > 0  # stalls happened and were dealt with


@pytest.mark.parametrize("breaker", list(BREAKERS))
async def test_tcp_resets_mid_stream_leave_every_stream_exact_or_explicitly_failed(
    upstream_ns: UpstreamNamespace, tmp_path: Path, results: list[Tally], breaker: str
) -> None:
    require_tool("iptables", "iptables")
    await start_simulator(upstream_ns)
    hold = 1.5
    rule = ("INPUT", "-p", "tcp", "--dport", str(UPSTREAM_PORT),
            "-j", "REJECT", "--reject-with", "tcp-reset")  # fmt: skip
    tally = Tally(f"iptables REJECT tcp-reset mid-stream {hold:g}s, {breaker}")
    async with (
        intact_in_root_ns(tmp_path, upstream_ns, breaker) as (daemon, outcomes),
        streams_in_background(
            daemon.socket_path, outcomes, tally, count=24, concurrency=12, seed=12
        ) as progress,
    ):
        await progress.wait_for(streams=8, chunks=10)
        mid = progress.past(10)
        # The upstream host now answers every segment from intact (its ACKs, new SYNs) with
        # a TCP reset, until the rule goes.
        await upstream_ns.iptables("-I", *rule)
        await asyncio.sleep(hold)
        await upstream_ns.iptables("-D", *rule)
    tally.notes.append(f"rule inserted with {mid} streams past 10 chunks")
    results.append(tally)
    assert_never_silently_broken(tally, 24)
    assert sum(tally.interruptions.values()) >= mid  # the resets did cut streams
    assert tally.resumed + tally.explicit_errors > 0
    if breaker == "breaker kept closed":
        assert tally.resumed > 0  # the answers went on once the resets stopped


@pytest.mark.parametrize("breaker", list(BREAKERS))
async def test_upstream_killed_and_restarted_mid_stream_leaves_streams_exact_or_explicitly_failed(
    upstream_ns: UpstreamNamespace, tmp_path: Path, results: list[Tally], breaker: str
) -> None:
    sim = await start_simulator(upstream_ns)
    down = 1.0
    tally = Tally(f"upstream SIGKILL mid-stream, back after {down:g}s, {breaker}")
    async with (
        intact_in_root_ns(tmp_path, upstream_ns, breaker) as (daemon, outcomes),
        streams_in_background(
            daemon.socket_path, outcomes, tally, count=24, concurrency=12, seed=13
        ) as progress,
    ):
        await progress.wait_for(streams=8, chunks=10)
        mid = progress.past(10)
        await sim.kill()  # SIGKILL: the kernel closes its connections, no goodbye
        killed = time.monotonic()
        await asyncio.sleep(down)
        await start_simulator(upstream_ns)
        restarted = time.monotonic() - killed
    tally.notes.append(
        f"killed with {mid} streams past 10 chunks, listening again after {restarted:.1f}s"
    )
    results.append(tally)
    assert_never_silently_broken(tally, 24)
    assert sum(tally.interruptions.values()) >= mid
    if breaker == "breaker kept closed":
        assert tally.resumed > 0  # the answers went on from the restarted process
