"""Fixtures of the ops tests: repository paths, the dashboards and their queries, the
Prometheus binaries, and a real intact daemon in front of the simulated upstream."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import structlog

from intact.daemon import RunningDaemon, running_daemon
from intact.simulator import SimulatedUpstream
from intact.telemetry.runtime import start_telemetry
from support import fast_config, fast_sim, sdk, stream_chat

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
UPSTREAM = "sim0"


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL expression of a dashboard, and where it sits."""

    dashboard: str
    where: str
    expr: str


def _queries(name: str, board: dict[str, Any]) -> Iterator[PanelQuery]:
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            yield PanelQuery(name, where, target["expr"])
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            yield PanelQuery(name, f"annotation {annotation['name']!r}", annotation["expr"])


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


@pytest.fixture(scope="session")
def panel_queries(dashboards: dict[str, dict[str, Any]]) -> list[PanelQuery]:
    return [query for name, board in dashboards.items() for query in _queries(name, board)]


def _binary(name: str, install: str, required_by: str) -> str:
    """The path of a tool; skip without it, unless ``required_by``=1 (CI) forbids that."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not on PATH ({install})"
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{reason}, and {required_by}=1 forbids skipping")
    pytest.skip(reason)


PROMETHEUS_PACKAGE = "Debian: apt-get install --no-install-recommends prometheus"


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool", PROMETHEUS_PACKAGE, "REQUIRE_PROMETHEUS")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return _binary("prometheus", PROMETHEUS_PACKAGE, "REQUIRE_PROMETHEUS")


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl, for `kubectl kustomize` (kustomize built in)."""
    return _binary(
        "kubectl", "any kubectl >= 1.27, e.g. from google-cloud-cli", "REQUIRE_DEPLOY_TOOLS"
    )


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """docker-compose, for `docker-compose config` (validates a compose file offline)."""
    return _binary(
        "docker-compose",
        "Debian: apt-get install --no-install-recommends docker-compose",
        "REQUIRE_DEPLOY_TOOLS",
    )


@dataclass
class Intact:
    """A running daemon, its simulated upstream and an app's SDK client."""

    sim: SimulatedUpstream
    daemon: RunningDaemon
    client: openai.AsyncOpenAI

    async def mixed_traffic(self) -> None:
        """Three completed streams, two recovered (a reset after 4 chunks), one failed."""
        for _ in range(3):
            assert (await stream_chat(self.client)).error is None
        for _ in range(2):
            self.sim.schedule_faults(["reset@5", "none"])
            assert (await stream_chat(self.client)).error is None
        self.sim.schedule_faults(["http_500"] * self.daemon.config.retry.max_attempts)
        assert (await stream_chat(self.client)).error is not None

    async def metrics_text(self) -> str:
        assert self.daemon.admin_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.daemon.admin_url}/metrics") as resp,
        ):
            assert resp.status == 200
            return await resp.text()


@pytest.fixture(scope="session")
def serve_intact() -> Callable[..., AbstractAsyncContextManager[Intact]]:
    """``async with serve_intact(workdir, **config_overrides) as intact``: telemetry wired as
    `intact run` wires it (/metrics on a free loopback port), one upstream named sim0.
    ``environ`` replaces the process environment for telemetry (``OTEL_*`` variables)."""

    @contextlib.asynccontextmanager
    async def serve(
        workdir: Path, *, environ: Mapping[str, str] | None = None, **over: Any
    ) -> AsyncIterator[Intact]:
        async with fast_sim() as sim:
            upstreams = [{"name": UPSTREAM, "base_url": sim.base_url}]
            cfg = fast_config(workdir, upstreams, telemetry={"log_format": "json"}, **over)
            runtime = start_telemetry(cfg, log_stream=io.StringIO(), environ=environ)
            try:
                async with running_daemon(
                    cfg, telemetry=runtime.telemetry, metrics_handler=runtime.metrics_handler
                ) as daemon:
                    client = sdk(daemon.socket_path)
                    try:
                        yield Intact(sim, daemon, client)
                    finally:
                        await client.close()
            finally:
                runtime.shutdown(timeout=1.0)

    return serve


@pytest.fixture(scope="module", autouse=True)
def restore_logging() -> Iterator[None]:
    """start_telemetry reconfigures structlog and the root logger; undo that after each
    module (module-wide, so a daemon shared by a module's tests keeps its logging)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
