"""The official openai Node SDK as the app: it ends a stream that closes without [DONE]
silently, so intact must never close a broken stream cleanly; an SSE error event makes it
throw."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
EXPECTED = expected_answer(MESSAGES)

_missing = shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").exists()
if _missing and os.environ.get("REQUIRE_NODE") == "1":
    raise RuntimeError("REQUIRE_NODE=1 but node or tests/node/node_modules is missing")
pytestmark = pytest.mark.skipif(
    _missing, reason="needs node and `npm ci --prefix tests/node` (.ci/run installs both)"
)


async def node_stream(base_url: str, socket_path: str | None = None) -> dict[str, Any]:
    args = [str(NODE_DIR / "stream_chat.mjs"), base_url, json.dumps(MESSAGES)]
    if socket_path:
        args.append(socket_path)
    proc = await asyncio.create_subprocess_exec(
        "node", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_without_intact_the_node_sdk_takes_a_truncated_stream_as_complete() -> None:
    # The problem intact exists for: a clean close mid-answer raises nothing in Node.
    async with fast_sim() as sim:
        sim.schedule_faults(["truncate@20"])
        seen = await node_stream(sim.base_url)
    assert seen["raised"] is False
    assert seen["text"] != EXPECTED.content and (EXPECTED.content or "").startswith(seen["text"])


async def test_through_intact_the_node_sdk_gets_the_whole_answer(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["truncate@20", "reset@5"])
        seen = await node_stream("http://intact/v1", d.socket_path)
    assert seen["raised"] is False
    assert seen["text"] == EXPECTED.content
    assert seen["finish"] == EXPECTED.finish_reason


async def test_an_unrecoverable_stream_makes_the_node_sdk_throw(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, retry={"max_attempts": 2}) as d:
        sim.schedule_faults(["truncate@20", "truncate@3"])
        seen = await node_stream("http://intact/v1", d.socket_path)
    assert seen["raised"] is True
    assert seen["code"] == "attempts_exhausted"
    assert seen["text"] and (EXPECTED.content or "").startswith(seen["text"])
