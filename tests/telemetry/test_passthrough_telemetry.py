"""Pass-through requests are counted on their own series, with api="passthrough", and each
gets a request_done line; the chat stream series never see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from intact.simulator import SimulatedUpstream
from telemetry.helpers import app_client, daemon_config, scrape, scraped, serving

pytestmark = pytest.mark.timeout(20)


async def test_pass_through_requests_are_counted_by_endpoint_and_outcome(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url)
    sinks = start_sinks(cfg)
    async with serving(cfg, sinks) as d:
        client = app_client(d.socket_path)
        await client.embeddings.create(model="sim-1", input="x")  # completed
        sim.schedule_faults(["http_503"])
        await client.embeddings.create(model="sim-1", input="x")  # recovered
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("no-such-model")  # rejected: the upstream's 404
        samples = await scrape(d.admin_url)

    counts = {
        ("passthrough", "embeddings", "sim", "completed"): 1,
        ("passthrough", "embeddings", "sim", "recovered"): 1,
        ("passthrough", "models", "sim", "rejected"): 1,
    }
    keys = ("api", "endpoint", "upstream", "outcome")
    assert sinks.counts("intact.passthrough.requests", *keys) == counts
    assert scraped(samples, "intact_passthrough_requests_total", *keys) == counts
    assert sinks.counts("intact.streams", "outcome") == {}

    done = [line for line in sinks.log_lines() if line["event"] == "request_done"]
    assert [(line["api"], line["path"], line["outcome"], line["attempts"], line["status"])
            for line in done] == [
        ("passthrough", "/v1/embeddings", "completed", 1, 200),
        ("passthrough", "/v1/embeddings", "recovered", 2, 200),
        ("passthrough", "/v1/models/no-such-model", "rejected", 1, 404),
    ]  # fmt: skip
    assert done[1]["interruptions"] == ["http_5xx"]
    assert done[1]["model"] == "sim-1" and done[2]["model"] is None
