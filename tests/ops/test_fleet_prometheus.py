"""The fleet view, live: one real Prometheus scrapes three `intact run` processes at once.

Each daemon stands for the sidecar of one pod: its own socket, admin port and config, and the
`namespace`/`pod` target labels a Kubernetes scrape adds (here from static_configs labels).
All three use two upstreams, each serving one model so that nothing fails over: `vllm` (a
simulated upstream, except for pod chat-c, whose path to it is broken: connections are
refused) and `openai` (one simulated upstream shared by all three, later taken down).

First the fleet shows one pod's problem: the *Intact / Fleet* dashboard's queries (variables
substituted as Grafana sends them) name chat-c as the pod breaking streams and `vllm` as
failing on one pod of three, and IntactCircuitBreakerOpen goes pending for chat-c alone.
Then `openai` goes down for everyone: its breaker opens on all three pods, which is one
IntactUpstreamFailingFleetWide alert and no per-pod alert for it.

The tests read one scenario in two phases and run in file order. Skipped without
`prometheus` on PATH, unless REQUIRE_PROMETHEUS=1 (CI), which makes it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from intact.simulator import SimulatedUpstream
from support import fast_sim, sdk, stream_chat

from .prometheus_server import (
    PrometheusAPI,
    Target,
    as_promql,
    free_port,
    running_prometheus,
    value,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

FLEET_BOARD = "intact-fleet.json"
PODS = (("shop", "shop-a"), ("shop", "shop-b"), ("chat", "chat-c"))
BROKEN_POD = "chat-c"  # cannot reach vllm
MODELS = {"vllm": "m-vllm", "openai": "m-openai"}
REQUESTS = 4  # per pod and model in each phase

# Small timeouts; a breaker judged on 4 calls at 50% failures that stays open for the test.
CONFIG = """\
[server]
socket = {socket}
metrics_addr = "127.0.0.1:{port}"
drain_timeout = 1.0

[retry]
max_attempts = 2
base_delay = 0.01
max_delay = 0.05
budget_min_per_second = 100.0

[stream]
connect_timeout = 1.0
first_token_timeout = 2.0
stall_timeout = 1.0
total_timeout = 10.0

[breaker]
minimum_calls = 4
window = 30.0
failure_rate_threshold = 0.5
open_duration = 120.0

[telemetry]
log_format = "json"

[[upstreams]]
name = "vllm"
base_url = {vllm}
models = ["m-vllm"]
resume = "prefill"

[[upstreams]]
name = "openai"
base_url = {openai}
models = ["m-openai"]
resume = "prefill"
"""


@dataclass
class Pod:
    namespace: str
    name: str
    admin: str  # host:port
    client: openai.AsyncOpenAI

    async def stream(self, upstream: str) -> bool:
        """One streamed request for the model only ``upstream`` serves; True if whole."""
        return (await stream_chat(self.client, model=MODELS[upstream])).error is None


@dataclass
class Fleet:
    api: PrometheusAPI
    pods: list[Pod]
    openai_sim: SimulatedUpstream
    board: dict[str, Any]

    def panel_query(self, title: str, ref: str = "A") -> str:
        (panel,) = [p for p in self.board["panels"] if p["title"] == title]
        (target,) = [t for t in panel["targets"] if t["refId"] == ref]
        return as_promql(target["expr"], "openai")

    async def panel(self, title: str, ref: str = "A") -> list[dict[str, Any]]:
        return await self.api.query(self.panel_query(title, ref))

    async def by_label(self, title: str, label: str, ref: str = "A") -> dict[str, float]:
        return {s["metric"][label]: round(value(s), 3) for s in await self.panel(title, ref)}

    async def active_alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in await self.api.alerts() if a["labels"]["alertname"] == name]

    async def wait_for(self, what: str, expr: str, expected: dict[str, float], key: str) -> None:
        """Until ``expr`` answers ``expected`` (a value per ``key`` label)."""

        async def answered() -> bool:
            found = {s["metric"].get(key, ""): value(s) for s in await self.api.query(expr)}
            return found == expected

        await self.api.until(what, answered)


@contextlib.contextmanager
def refused_address() -> Iterator[str]:
    """A loopback address that refuses connections: bound, never listening, so no other
    process can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        yield f"http://{host}:{port}/v1"


@contextlib.contextmanager
def running_intact(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`intact run --config ...` as its own process; SIGTERM (drain) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTACT_", "OTEL_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "intact", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def healthy(
    session: aiohttp.ClientSession, admin: str, proc: subprocess.Popen[bytes]
) -> bool:
    assert proc.poll() is None, f"intact exited with {proc.returncode}"
    try:
        async with session.get(f"http://{admin}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def start_pod(
    stack: contextlib.AsyncExitStack,
    session: aiohttp.ClientSession,
    workdir: Path,
    namespace: str,
    name: str,
    upstreams: dict[str, str],
) -> Pod:
    """One pod's intact: its config file, its process, its app client; healthy on return."""
    port = free_port()
    socket_path = workdir / f"{name}.sock"
    config = workdir / f"{name}.toml"
    config.write_text(
        CONFIG.format(
            socket=json.dumps(str(socket_path)),
            port=port,
            **{up: json.dumps(url) for up, url in upstreams.items()},
        )
    )
    proc = stack.enter_context(running_intact(config, workdir / f"{name}.log"))
    client = sdk(str(socket_path), timeout=15.0)
    stack.push_async_callback(client.close)
    pod = Pod(namespace, name, f"127.0.0.1:{port}", client)
    deadline = asyncio.get_running_loop().time() + 20
    while not await healthy(session, pod.admin, proc):
        assert asyncio.get_running_loop().time() < deadline, f"{name} did not start"
        await asyncio.sleep(0.1)
    return pod


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(
    prometheus: str,
    dashboards: dict[str, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Fleet]:
    """Phase one: three pods scraped, each with traffic to both upstreams; vllm is
    unreachable from chat-c alone, so its breaker there is open."""
    workdir = tmp_path_factory.mktemp("fleet")
    async with (
        fast_sim() as vllm_sim,
        fast_sim() as openai_sim,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        contextlib.AsyncExitStack() as stack,
    ):
        refused = stack.enter_context(refused_address())

        def upstreams(pod: str) -> dict[str, str]:
            vllm = refused if pod == BROKEN_POD else vllm_sim.base_url
            return {"vllm": vllm, "openai": openai_sim.base_url}

        pods = await asyncio.gather(
            *(start_pod(stack, session, workdir, ns, name, upstreams(name)) for ns, name in PODS)
        )
        targets = [Target(p.admin, {"namespace": p.namespace, "pod": p.name}) for p in pods]
        url, log = stack.enter_context(running_prometheus(prometheus, workdir, targets))
        api = PrometheusAPI(session, url, log)
        await api.until("Prometheus to be ready", api.ready)
        fleet = Fleet(api, list(pods), openai_sim, dashboards[FLEET_BOARD])
        everyone = {p.name: 1.0 for p in pods}
        await fleet.wait_for("every pod to be scraped", 'up{job="intact"}', everyone, "pod")

        async def wave(pod: Pod, requests: int) -> None:
            for upstream in MODELS:
                whole = [await pod.stream(upstream) for _ in range(requests)]
                broken = pod.name == BROKEN_POD and upstream == "vllm"
                assert whole == [not broken] * requests, (pod.name, upstream)

        # The first wave creates the series of the failed attempts; rate() sees the second,
        # which also opens chat-c's vllm breaker.
        done = 0
        for requests in (1, REQUESTS - 1):
            await asyncio.gather(*(wave(pod, requests) for pod in pods))
            done += requests
            await fleet.wait_for(
                f"{done} streams per pod and model to be scraped",
                'sum by (pod) (intact_streams_total{outcome=~"completed|failed"})',
                {p.name: 2.0 * done for p in pods},
                "pod",
            )
        await fleet.wait_for(
            "chat-c's open vllm breaker to be recorded",
            'job_instance_upstream:intact_breaker_open:bool{upstream="vllm"}',
            {"shop-a": 0.0, "shop-b": 0.0, BROKEN_POD: 1.0},
            "pod",
        )
        yield fleet


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outage(fleet: Fleet) -> Fleet:
    """Phase two: openai goes down for every pod, and its breaker opens on all three."""
    fleet.openai_sim.set_mode("down")
    for _ in range(REQUESTS):
        seen = await asyncio.gather(*(pod.stream("openai") for pod in fleet.pods))
        assert not any(seen)
    await fleet.wait_for(
        "openai's open breakers to be recorded",
        'job_instance_upstream:intact_breaker_open:bool{upstream="openai"}',
        {pod.name: 1.0 for pod in fleet.pods},
        "pod",
    )
    return fleet


async def test_the_fleet_dashboard_names_the_pod_breaking_streams(fleet: Fleet) -> None:
    most_failed = await fleet.panel("Pods with the most failed streams")
    assert [s["metric"]["pod"] for s in most_failed] == [BROKEN_POD]
    assert most_failed[0]["metric"]["namespace"] == "chat"
    ratios = await fleet.by_label("Failed-stream ratio by pod (top 10)", "pod")
    # half of chat-c's streams (the vllm ones) failed; none of the others'
    assert ratios == {"shop-a": 0.0, "shop-b": 0.0, BROKEN_POD: 0.5}
    interrupted = await fleet.by_label("Interruption rate by pod (top 10)", "pod")
    assert interrupted == ratios
    openings = await fleet.panel("Breaker openings by pod")
    assert [(s["metric"]["pod"], s["metric"]["upstream"]) for s in openings] == [
        (BROKEN_POD, "vllm")
    ]
    (failing_pods,) = await fleet.panel("Pods with failed streams")
    assert value(failing_pods) == 1


async def test_one_pods_upstream_failure_shows_as_one_pod_of_three(fleet: Fleet) -> None:
    share = await fleet.by_label("Share of pods with the breaker open, now", "upstream")
    assert share == {"vllm": round(1 / 3, 3), "openai": 0.0}
    title = "Pods with the breaker open, per upstream"
    assert await fleet.by_label(title, "upstream", "A") == {"vllm": 1, "openai": 0}
    assert await fleet.by_label(title, "upstream", "B") == {"vllm": 3, "openai": 3}
    title = "Pods with failed attempts, per upstream"
    assert await fleet.by_label(title, "upstream", "A") == {"vllm": 1}
    assert await fleet.by_label(title, "upstream", "B") == {"vllm": 3, "openai": 3}
    (fleet_wide,) = await fleet.panel("Upstreams failing fleet-wide")
    assert value(fleet_wide) == 0


async def test_one_pods_open_breaker_alerts_for_that_pod_only(fleet: Fleet) -> None:
    async def active() -> bool:
        return bool(await fleet.active_alerts("IntactCircuitBreakerOpen"))

    await fleet.api.until("IntactCircuitBreakerOpen to be active", active)
    (alert,) = await fleet.active_alerts("IntactCircuitBreakerOpen")
    labels = alert["labels"]
    assert (labels["namespace"], labels["pod"], labels["upstream"]) == ("chat", BROKEN_POD, "vllm")
    assert (
        f"upstream vllm on {fleet.pods[2].admin} (pod chat/chat-c) has been open"
        in (alert["annotations"]["description"])
    )
    assert not await fleet.active_alerts("IntactUpstreamFailingFleetWide")


async def test_an_upstream_down_for_every_pod_is_one_fleet_wide_alert(outage: Fleet) -> None:
    fleet_wide: list[dict[str, Any]] = []
    per_pod: list[dict[str, str]] = []

    async def settled() -> bool:
        alerts = await outage.api.alerts()
        fleet_wide[:] = [
            a for a in alerts if a["labels"]["alertname"] == "IntactUpstreamFailingFleetWide"
        ]
        per_pod[:] = [
            a["labels"] for a in alerts if a["labels"]["alertname"] == "IntactCircuitBreakerOpen"
        ]
        # the rule groups evaluate apart, and the pods' breakers open a scrape apart: give
        # them the cycles to agree
        return (
            bool(fleet_wide)
            and "on 3 intact instances" in fleet_wide[0]["annotations"]["description"]
            and all(a["upstream"] != "openai" for a in per_pod)
        )

    await outage.api.until("one fleet-wide alert instead of per-pod ones", settled)
    (alert,) = fleet_wide
    assert alert["labels"]["upstream"] == "openai"
    assert (
        "open for more than 1 minute on 3 intact instances of job intact"
        in (alert["annotations"]["description"])
    )
    # the per-pod alert stays with the one pod whose own path is broken
    assert [(a["pod"], a["upstream"]) for a in per_pod] == [(BROKEN_POD, "vllm")]


async def test_the_fleet_dashboard_tells_everyone_from_one_pod(outage: Fleet) -> None:
    share = await outage.by_label("Share of pods with the breaker open, now", "upstream")
    assert share == {"openai": 1.0, "vllm": round(1 / 3, 3)}
    assert list(share) == ["openai", "vllm"]  # sorted, the fleet-wide one first
    (fleet_wide,) = await outage.panel("Upstreams failing fleet-wide")
    assert value(fleet_wide) == 1
    (open_pods,) = await outage.panel("Pods with an open breaker")
    assert value(open_pods) == 3
    (failing_pods,) = await outage.panel("Pods with failed streams")
    assert value(failing_pods) == 3


async def test_every_fleet_query_returns_data_and_every_variable_lists_the_pods(
    outage: Fleet, dashboards: dict[str, dict[str, Any]]
) -> None:
    board = dashboards[FLEET_BOARD]
    empty = [
        f"{panel['title']} {target['refId']}"
        for panel in board["panels"]
        for target in panel.get("targets", ())
        if not await outage.api.query(as_promql(target["expr"], "openai"))
    ]
    assert not empty, f"fleet queries without data: {empty}"
    listed = {}
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            selector, label = var["definition"].removeprefix("label_values(")[:-1].rsplit(", ", 1)
            listed[var["name"]] = set(
                await outage.api.get(
                    f"/api/v1/label/{label}/values", **{"match[]": as_promql(selector, "")}
                )
            )
    assert listed["job"] == {"intact"}
    assert listed["namespace"] == {"shop", "chat"}
    assert listed["pod"] == {name for _, name in PODS}
    assert listed["instance"] == {pod.admin for pod in outage.pods}
    assert listed["upstream"] == set(MODELS)
