"""Real network faults between intact and its upstream: the simulated upstream in a network
namespace of its own, reached over a veth pair, with netem, TCP resets and a killed process
on the way.

Needs root (CAP_NET_ADMIN) and iproute2, and iptables for the reset and the NFQUEUE netem
fallback. Without them the tests are skipped with the reason, unless REQUIRE_NETNS=1 (set by
.ci/run), which makes a missing capability a failure. What each fault did is printed as a
table at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intact.config import Config, build_config
from intact.daemon import RunningDaemon, running_daemon
from intact.demo.outcomes import RelayOutcomes
from netfaults.netns import (
    NetnsUnavailable,
    Spawned,
    UpstreamNamespace,
    sweep_stale,
    why_unavailable,
)
from netfaults.streams import Tally

REQUIRED = os.environ.get("REQUIRE_NETNS") == "1"
UPSTREAM_PORT = 8000
"""The simulator's port inside its namespace (the namespace is the test's own)."""
RESULTS: list[Tally] = []


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail when REQUIRE_NETNS=1 says the suite must run here."""
    if REQUIRED:
        pytest.fail(f"REQUIRE_NETNS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> None:
    if shutil.which(name) is None:
        unavailable(f"`{name}` is not installed (apt-get install {package})")


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    reason = why_unavailable()
    if reason is None:
        sweep_stale()
    return reason


@pytest.fixture
async def upstream_ns(netns_reason: str | None) -> AsyncIterator[UpstreamNamespace]:
    """A fresh namespace and veth pair; removed (processes, rules, links) however the test
    ends."""
    if netns_reason is not None:
        unavailable(netns_reason)
    try:
        ns = UpstreamNamespace.create()
    except (NetnsUnavailable, RuntimeError) as exc:
        unavailable(str(exc))
    try:
        yield ns
    finally:
        await ns.aclose()


async def start_simulator(ns: UpstreamNamespace, seed: int = 1) -> Spawned:
    """`intact simulate-upstream` inside the namespace: no faults of its own, 60 tokens a
    second, continuations exactly as a model at temperature 0 gives them."""
    return await ns.spawn(
        sys.executable,
        "-m",
        "intact",
        "simulate-upstream",
        f"--host={ns.ns_addr}",
        f"--port={UPSTREAM_PORT}",
        f"--seed={seed}",
        "--fault-rate=0",
        "--tok-per-s=60",
        "--ttft=0.05",
        "--repeat-prob=0",
        ready="listening",
    )


def netfault_config(tmp_path: Path, ns: UpstreamNamespace, **over: Any) -> Config:
    """The daemon's defaults (backoff and retry budget included), with stream timeouts sized
    for a simulator that answers at once over a 400 ms round trip."""
    return build_config(
        {
            "server": {
                "socket": str(tmp_path / "intact.sock"),
                "metrics_addr": "off",
                "drain_timeout": 2.0,
            },
            "stream": {
                "connect_timeout": 3.0,
                "first_token_timeout": 5.0,
                "stall_timeout": 2.0,
                "total_timeout": 60.0,
                "answer_start_timeout": 30.0,
            },
            "routing": {"hedge_after": "off"},
            "telemetry": {"log_level": "error"},
            "upstreams": [
                {
                    "name": "netns-sim",
                    "base_url": f"http://{ns.ns_addr}:{UPSTREAM_PORT}/v1",
                    "resume": "prefill",
                }
            ],
            **over,
        }
    )


BREAKERS: dict[str, dict[str, Any]] = {
    # A burst of failures opens it (20 calls, half failing): the streams still in flight and
    # the next ones get upstream_unavailable at once, which is explicit but tests no recovery.
    "default breaker": {"open_duration": 3.0},
    # Kept closed (bench/chaos.py --breaker off): every stream goes through retry and resume.
    "breaker kept closed": {"minimum_calls": 1_000_000},
}


@contextlib.asynccontextmanager
async def intact_in_root_ns(
    tmp_path: Path, ns: UpstreamNamespace, breaker: str = "default breaker"
) -> AsyncIterator[tuple[RunningDaemon, RelayOutcomes]]:
    """intact in this process (the root namespace), its upstream across the veth pair."""
    outcomes = RelayOutcomes()
    config = netfault_config(tmp_path, ns, breaker=BREAKERS[breaker])
    async with running_daemon(config, telemetry=outcomes) as daemon:
        yield daemon, outcomes


@pytest.fixture
def results() -> list[Tally]:
    """Rows of the results table printed at the end of the run."""
    return RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("real network faults (upstream in its own network namespace)")
    head = (
        f"{'fault':<64} {'streams':>7} {'exact':>5} {'recovered':>9} {'resumed':>7} "
        f"{'explicit':>8} {'silent':>6} {'garbled':>7} {'transport':>9} {'wall':>6}"
    )
    write(head)
    for t in RESULTS:
        write(
            f"{t.fault:<64} {t.streams:>7} {t.exact:>5} {t.recovered:>9} {t.resumed:>7} "
            f"{t.explicit_errors:>8} {t.silent_truncations:>6} {t.garbled:>7} "
            f"{t.transport_errors:>9} {t.wall_time:>5.1f}s"
        )
    for t in RESULTS:
        details = [
            "interruptions: " + (", ".join(f"{k}={n}" for k, n in t.interruptions.items()) or "-"),
            "errors: " + (", ".join(f"{k}={n}" for k, n in t.error_codes.items()) or "-"),
            *t.notes,
            *(f"BROKEN {p}" for p in t.problems),
        ]
        write(f"{t.fault}: " + "; ".join(details))
