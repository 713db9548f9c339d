"""Fixtures of the simulator's tests: simulators started with the test module's FAST
settings (and per-test overrides), stopped at the end, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from intact.simulator import SimulatedUpstream, SimulatorSettings
from support import StartSim


@pytest.fixture
async def start_sim(request: pytest.FixtureRequest) -> AsyncIterator[StartSim]:
    fast: dict[str, Any] = getattr(request.module, "FAST", {})
    started: list[SimulatedUpstream] = []

    async def start(**overrides: Any) -> SimulatedUpstream:
        sim = SimulatedUpstream(SimulatorSettings(**{**fast, **overrides}))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim(start_sim: StartSim) -> SimulatedUpstream:
    return await start_sim()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session
