"""`intact status` and `intact top` attach to a running daemon's admin listener and show what
the demo shows: streams by outcome, interruption rate, recovered tokens, breakers, budgets,
and streams in flight per upstream and per app."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from intact.config import build_config
from intact.daemon import RunningDaemon, running_daemon
from intact.simulator import SimulatedUpstream
from intact.status import AdminUnreachable, admin_url
from intact.telemetry.runtime import start_telemetry
from intact.top import render
from support import MESSAGES, fast_config, fast_sim, raw_client, restored_logging, sdk, stream_chat

UID = os.getuid()
CHAT = {"model": "sim-1", "messages": MESSAGES, "stream": True}
WITHOUT_RICH = "import sys; sys.modules['rich'] = None; from intact.cli import main; "


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield from restored_logging()


@contextlib.asynccontextmanager
async def watched_daemon(
    tmp_path: Path, sim: SimulatedUpstream, **over: Any
) -> AsyncIterator[RunningDaemon]:
    ups = [{"name": "sim", "base_url": sim.base_url, "resume": "prefill"}]
    apps = [{"name": "checkout", "uids": [UID], "max_concurrent_streams": 8}]
    cfg = fast_config(tmp_path, ups, apps=apps, telemetry={"log_format": "json"}, **over)
    rt = start_telemetry(cfg, log_stream=io.StringIO())
    try:
        async with running_daemon(
            cfg, telemetry=rt.telemetry, metrics_handler=rt.metrics_handler
        ) as d:
            yield d
    finally:
        rt.shutdown(timeout=1.0)


async def intact(*args: str, python: str | None = None) -> tuple[int, str, str]:
    """Run the CLI in a child process without blocking the loop the daemon runs on."""
    cmd = ["-c", python + f"sys.exit(main({list(args)!r}))"] if python else ["-m", "intact", *args]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_prints_streams_breakers_budgets_and_apps_as_json(tmp_path: Path) -> None:
    async with fast_sim() as sim, watched_daemon(tmp_path, sim) as d:
        assert d.admin_url is not None
        client = sdk(d.socket_path)
        assert (await stream_chat(client)).error is None
        sim.schedule_faults(["reset@4"])  # interrupted, then resumed: recovered
        assert (await stream_chat(client)).error is None
        sim.schedule_faults(["http_400"])  # the upstream refuses: rejected
        assert (await stream_chat(client)).error is not None
        code, out, err = await intact("status", "--admin", d.admin_url)
    assert code == 0, err
    status = json.loads(out)
    assert status["admin"] == d.admin_url
    assert status["ready"] is True
    assert status["streams"] == {
        "completed": 1, "recovered": 1, "failed": 0, "rejected": 1, "cancelled": 0,
    }  # fmt: skip
    assert status["interruption_rate"] == pytest.approx(1 / 2)
    assert status["interruptions"] == {"reset": 1}
    assert status["recovered_tokens"] > 0
    assert status["active_streams"] == 0
    [up] = status["upstreams"]
    assert (up["name"], up["breaker"], up["active_streams"]) == ("sim", "closed", 0)
    assert up["retry_budget"] > 0 and up["retry_budget_exhausted"] == 0
    assert up["streams"]["recovered"] == 1 and up["recovered_tokens"] > 0
    apps = {app["name"]: app for app in status["apps"]}
    assert set(apps) == {"checkout", "other"}
    assert apps["checkout"]["streams"]["completed"] == 1
    assert apps["checkout"]["max_concurrent_streams"] == 8
    assert apps["checkout"]["refused"]["stream_limit"] == 0
    assert status["connections"]["max_connections_per_peer"] == 1024


async def test_status_shows_streams_in_flight_per_upstream_and_per_app(tmp_path: Path) -> None:
    async with (
        fast_sim(tok_per_s=5.0) as sim,
        watched_daemon(tmp_path, sim, stream={"stall_timeout": 5.0}) as d,
        raw_client(d.socket_path) as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT) as live,
    ):
        assert d.admin_url is not None
        lines = live.aiter_lines()  # kept: a dropped iterator closes the stream
        await anext(lines)
        code, out, err = await intact("status", "--admin", d.admin_url)
    assert code == 0, err
    status = json.loads(out)
    assert status["active_streams"] == 1
    assert status["upstreams"][0]["active_streams"] == 1
    assert {a["name"]: a["active_streams"] for a in status["apps"]} == {"checkout": 1, "other": 0}


async def test_status_works_without_rich(tmp_path: Path) -> None:
    async with fast_sim() as sim, watched_daemon(tmp_path, sim) as d:
        assert d.admin_url is not None
        code, out, err = await intact("status", "--admin", d.admin_url, python=WITHOUT_RICH)
    assert code == 0, err
    assert json.loads(out)["upstreams"][0]["name"] == "sim"


async def test_status_finds_the_admin_listener_from_the_config(tmp_path: Path) -> None:
    async with fast_sim() as sim, watched_daemon(tmp_path, sim) as d:
        assert d.admin_url is not None
        port = d.admin_url.rsplit(":", 1)[1]
        cfg = tmp_path / "intact.toml"
        cfg.write_text(f'[server]\nmetrics_addr = "0.0.0.0:{port}"\n')
        code, out, err = await intact("status", "--config", str(cfg))
    assert code == 0, err
    assert json.loads(out)["admin"] == f"http://127.0.0.1:{port}"


async def test_status_of_an_unreachable_daemon_exits_1_saying_where_it_looked() -> None:
    code, out, err = await intact("status", "--admin", "http://127.0.0.1:9", "--timeout", "1")
    assert code == 1 and out == ""
    assert "cannot reach the intact admin listener at http://127.0.0.1:9" in err


def test_admin_url_comes_from_server_metrics_addr() -> None:
    def url(addr: str) -> str:
        return admin_url(build_config({"server": {"metrics_addr": addr}}))

    assert url("127.0.0.1:9464") == "http://127.0.0.1:9464"
    assert url("0.0.0.0:9000") == "http://127.0.0.1:9000"  # a wildcard is reached on loopback
    assert url("[::1]:9464") == "http://[::1]:9464"
    with pytest.raises(AdminUnreachable, match="metrics_addr is 'off'"):
        url("off")


async def test_top_once_renders_one_frame(tmp_path: Path) -> None:
    async with fast_sim() as sim, watched_daemon(tmp_path, sim) as d:
        assert d.admin_url is not None
        sim.schedule_faults(["reset@4"])
        assert (await stream_chat(sdk(d.socket_path))).error is None
        code, out, err = await intact("top", "--once", "--admin", d.admin_url)
    assert code == 0, err
    for needle in ("intact top", "interruption rate", "100.00%", "recovered tokens",
                   "upstreams", "sim", "closed", "apps", "checkout"):  # fmt: skip
        assert needle in out


async def test_top_without_rich_says_what_to_install(tmp_path: Path) -> None:
    code, _, err = await intact("top", "--once", "--admin", "http://127.0.0.1:9",
                                python=WITHOUT_RICH)  # fmt: skip
    assert code == 2
    assert "intact[demo]" in err and "intact status" in err


def test_top_frame_shows_an_open_breaker_and_the_rate() -> None:
    status: dict[str, Any] = {
        "admin": "http://127.0.0.1:9464", "version": "0.1.0", "ready": False, "uptime_s": 12.0,
        "active_streams": 3, "interruption_rate": 0.032, "interruptions": {"reset": 4},
        "streams": {"completed": 90, "recovered": 2, "failed": 1, "rejected": 0, "cancelled": 0},
        "recovered_tokens": 321, "connections": None,
        "upstreams": [{
            "name": "vllm", "breaker": "open", "failure_rate": 0.9, "calls_in_window": 20,
            "open_remaining_s": 3.0, "retry_budget": 7.0, "retry_budget_exhausted": 5,
            "active_streams": 3, "queued": 0, "max_concurrent_streams": 256,
            "streams": {"completed": 90, "recovered": 2, "failed": 1}, "recovered_tokens": 321,
        }],
        "apps": [],
    }  # fmt: skip
    console = Console(record=True, width=140)
    console.print(render(status, rate=12.5))
    text = console.export_text()
    assert "NOT READY" in text and "open" in text and "3.20%" in text
    assert "93  (12.5/s)" in text
