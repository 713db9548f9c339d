"""A real Prometheus scrapes a real intact daemon and evaluates the shipped rules, unchanged.

Prometheus runs on loopback with a temporary storage directory, a 1 s scrape and rule
evaluation interval, and `deploy/prometheus/intact-rules.yml` as it ships. The `for:`
durations are not shortened: promtool's unit tests (rules_test.yml) already pin every alert's
timing, so this test checks what only live data can show. The breaker alerts become
*pending* (active, annotations rendered) as soon as the breaker opens, every rule evaluates
without error, and every dashboard expression runs and returns data.

Skipped without `prometheus` on PATH, unless REQUIRE_PROMETHEUS=1 (CI), which makes it fail.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from intact.resilience.breaker import BreakerState
from support import stream_chat

from .prometheus_server import RULES, PrometheusAPI, Target, as_promql, running_prometheus, value

# One daemon and one Prometheus for the module: each test reads the same live scenario.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

UPSTREAM = "sim0"

# Breaker: judged on 10 calls in 10 s, open at 50% failures, and open for the whole test.
# The mixed traffic makes 9 calls (4 failed) a wave: two waves leave it closed at 8/18, the
# first request against the downed upstream opens it.
DAEMON = {
    "retry": {"max_attempts": 2},
    "breaker": {
        "minimum_calls": 10,
        "window": 10.0,
        "failure_rate_threshold": 0.5,
        "open_duration": 120.0,
    },
}


@dataclass
class Live:
    """The scenario every test reads: Prometheus scraping intact, whose only upstream went
    down after two waves of mixed traffic, so its breaker is open."""

    api: PrometheusAPI
    target: str  # intact's admin listener, host:port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    serve_intact: Callable[..., Any], prometheus: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    workdir = tmp_path_factory.mktemp("live")
    async with serve_intact(workdir, **DAEMON) as intact:
        assert intact.daemon.admin_url is not None
        target = intact.daemon.admin_url.removeprefix("http://")
        with running_prometheus(prometheus, workdir, [Target(target)]) as (url, log):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                api = PrometheusAPI(session, url, log)
                await api.until("Prometheus to be ready", api.ready)

                async def scraped(expr: str, expected: float) -> bool:
                    found = await api.query(expr)
                    return bool(found) and value(found[0]) == expected

                up = f'up{{job="intact", instance="{target}"}}'
                await api.until("the intact target to be up", lambda: scraped(up, 1))
                # The first wave creates the series; rate() sees the second.
                for wave in (1, 2):
                    await intact.mixed_traffic()
                    await api.until(
                        f"wave {wave} to be scraped",
                        lambda w=wave: scraped("sum(intact_streams_total)", 6 * w),
                    )

                intact.sim.set_mode("down")
                breaker = intact.daemon.relay.upstreams[0].breaker
                for _ in range(10):
                    assert (await stream_chat(intact.client)).error is not None
                    if breaker.state is BreakerState.OPEN:
                        break
                assert breaker.state is BreakerState.OPEN
                state = f'intact_breaker_state{{upstream="{UPSTREAM}"}}'
                await api.until("the open breaker to be scraped", lambda: scraped(state, 2))
                yield Live(api, target)


async def test_prometheus_scrapes_intact_and_sees_the_open_breaker(live: Live) -> None:
    (up,) = await live.api.query('up{job="intact"}')
    assert up["metric"]["instance"] == live.target and value(up) == 1
    (state,) = await live.api.query("intact_breaker_state")
    assert state["metric"]["upstream"] == UPSTREAM and value(state) == 2


async def test_the_breaker_alerts_go_pending_with_rendered_annotations(live: Live) -> None:
    expected = {
        "IntactCircuitBreakerOpen",
        "IntactAllUpstreamsUnavailable",
        "IntactStreamsFailing",  # every stream fails now
        "IntactInterruptionRateHigh",
    }
    active: dict[str, list[dict[str, Any]]] = {}

    async def alerts_active() -> bool:
        active.clear()
        for alert in await live.api.alerts():
            active.setdefault(alert["labels"]["alertname"], []).append(alert)
        return expected <= set(active)

    await live.api.until(f"alerts {sorted(expected)} to be active", alerts_active)
    assert not {"IntactDown", "IntactTargetMissing", "IntactRetryBudgetExhausted"} & set(active)
    (breaker,) = active["IntactCircuitBreakerOpen"]
    assert breaker["state"] in ("pending", "firing")  # pending: for: 1m as shipped
    assert breaker["labels"]["upstream"] == UPSTREAM
    assert breaker["labels"]["severity"] == "warning"
    description = breaker["annotations"]["description"]
    assert f"upstream {UPSTREAM} on {live.target} has been open" in description
    (unavailable,) = active["IntactAllUpstreamsUnavailable"]
    assert unavailable["labels"]["severity"] == "critical"
    assert unavailable["annotations"]["description"].startswith(
        f"All 1 upstreams of intact on {live.target}"
    )
    for alert in (a for alerts in active.values() for a in alerts):
        for text in alert["annotations"].values():
            assert "error expanding template" not in text and "{{" not in text, text


async def test_every_rule_evaluates_and_every_recording_rule_has_a_value(live: Live) -> None:
    rules: list[dict[str, Any]] = []

    async def all_evaluated() -> bool:
        groups = (await live.api.get("/api/v1/rules"))["groups"]
        rules[:] = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule["health"] == "ok" for rule in rules)

    await live.api.until("every rule to evaluate", all_evaluated)
    shipped = re.findall(r"^\s*- (?:alert|record):", RULES.read_text(), re.MULTILINE)
    assert len(rules) == len(shipped)
    for rule in (r for r in rules if r["type"] == "recording"):
        assert await live.api.query(rule["name"]), f"{rule['name']} has no value"
    (open_now,) = await live.api.query("job_instance_upstream:intact_breaker_open:bool")
    assert value(open_now) == 1
    (failed,) = await live.api.query("job:intact_streams_failed:ratio_rate5m")
    (interrupted,) = await live.api.query("job_upstream:intact_streams_interrupted:ratio_rate5m")
    assert 0 < value(failed) < value(interrupted) < 1


async def test_every_dashboard_query_runs_and_returns_data(
    live: Live, panel_queries: list[Any]
) -> None:
    empty = []
    for query in panel_queries:
        result = await live.api.query(as_promql(query.expr, UPSTREAM))  # status "success"
        if not result:
            empty.append(f"{query.dashboard} {query.where}: {query.expr}")
        assert not any(math.isinf(value(sample)) for sample in result), query
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


async def test_every_dashboard_variable_lists_values(
    live: Live, dashboards: dict[str, dict[str, Any]]
) -> None:
    # Scraped without Kubernetes labels, as on a systemd host: namespace and pod list nothing
    # (their "All" still matches; test_fleet_prometheus.py scrapes with them).
    for board in dashboards.values():
        for var in board["templating"]["list"]:
            if var["type"] != "query" or var["name"] in ("namespace", "pod"):
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert match, var["definition"]
            values = await live.api.get(
                f"/api/v1/label/{match.group(2)}/values",
                **{"match[]": as_promql(match.group(1), UPSTREAM)},
            )
            assert values, var["definition"]
