"""A real Prometheus server for the ops tests: started on loopback with a temporary storage
directory, scraping the given targets every second and evaluating the shipped rules unchanged,
and a small client for its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "intact-rules.yml"
WAIT = 15.0  # longest wait for any one condition

# Grafana's variables, as the dashboards send them with "All" selected.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$job": ".*",
    "$namespace": ".*",
    "$pod": ".*",
    "$instance": ".*",
    "$upstream": ".*",
    "$model": ".*",
    "$api": ".*",
    "$app": ".*",
}


def as_promql(expr: str, drilldown_upstream: str) -> str:
    """A dashboard expression with Grafana's variables substituted; the upstream drilldown's
    single-value ``$upstream`` becomes ``drilldown_upstream``."""
    expr = expr.replace('="$upstream"', f'="{drilldown_upstream}"')
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


@dataclass(frozen=True)
class Target:
    """One scrape target, with the target labels a Kubernetes scrape would add."""

    address: str  # host:port of an intact admin listener
    labels: Mapping[str, str] = field(default_factory=dict)


def prometheus_config(targets: Sequence[Target]) -> str:
    # JSON is YAML: the static_configs need no hand-made quoting.
    static_configs = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: intact
    static_configs: {json.dumps(static_configs)}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_prometheus(
    binary: str, workdir: Path, targets: Sequence[Target]
) -> Iterator[tuple[str, Path]]:
    """Start Prometheus scraping ``targets`` as job intact; yield its URL and log; always stop
    it."""
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    log_path = workdir / "prometheus.log"
    url = f"http://127.0.0.1:{free_port()}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield url, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class PrometheusAPI:
    def __init__(self, session: aiohttp.ClientSession, url: str, log: Path) -> None:
        self.session, self.url, self.log = session, url, log

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: pending and firing."""
        return list((await self.get("/api/v1/alerts"))["alerts"])

    async def until(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + WAIT
        while not await check():
            if time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                pytest.fail(f"timed out waiting for {what}; prometheus log:\n{tail}")
            await asyncio.sleep(0.25)

    async def ready(self) -> bool:
        try:
            async with self.session.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])
