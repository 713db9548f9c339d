"""Reload without dropping a stream: SIGHUP, POST /admin/reload and `intact reload` re-read
the config and the API keys; new requests use the new config, streams in flight finish on the
old one; an invalid config is refused and the old one kept; unchanged upstreams keep their
breaker and budget."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from intact.config import Config, build_config, load_toml, merge_tables
from intact.daemon import running_daemon
from intact.resilience.breaker import BreakerState, CallOutcome
from intact.simulator import expected_answer
from support import MESSAGES, fast_sim, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)
INTACT = [sys.executable, "-m", "intact"]


def write_config(path: Path, tmp_path: Path, upstreams: list[dict[str, Any]], **over: Any) -> None:
    lines = [
        "[server]",
        f'socket = "{tmp_path / "intact.sock"}"',
        'metrics_addr = "127.0.0.1:0"',
        "drain_timeout = 2.0",
        "[stream]",
        f"stall_timeout = {over.get('stall_timeout', 0.5)}",
        "first_token_timeout = 2.0",
    ]
    for up in upstreams:
        lines.append("[[upstreams]]")
        for key, value in up.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    if over.get("garbage"):
        lines.append("[retry]\nmax_attempts = 'many'")
    path.write_text("\n".join(lines) + "\n")


def loader(path: Path) -> Any:
    def load() -> Config:
        return build_config(merge_tables(load_toml(path), {}))

    return load


async def test_reload_applies_to_new_requests_while_a_stream_in_flight_finishes(
    tmp_path: Path,
) -> None:
    cfg_file = tmp_path / "intact.toml"
    async with fast_sim(tok_per_s=40.0) as old, fast_sim() as new:
        write_config(cfg_file, tmp_path, [{"name": "a", "base_url": old.base_url}])
        load = loader(cfg_file)
        async with running_daemon(load(), load_config=load) as d:
            in_flight = asyncio.create_task(stream_chat(sdk(d.socket_path)))
            while old.stats.active_streams == 0:
                await asyncio.sleep(0.01)
            write_config(cfg_file, tmp_path, [{"name": "b", "base_url": new.base_url}])
            assert await d.reload(load)
            fresh = await stream_chat(sdk(d.socket_path))
            finished = await in_flight
            assert [u.name for u in d.relay.upstreams] == ["b"]
            assert new.stats.chat_requests == 1
            assert old.stats.chat_requests == 1
    assert finished.error is None and finished.text == EXPECTED.content
    assert fresh.error is None and fresh.text == EXPECTED.content


async def test_an_invalid_config_is_rejected_and_the_old_one_kept(tmp_path: Path) -> None:
    cfg_file = tmp_path / "intact.toml"
    async with fast_sim() as sim:
        write_config(cfg_file, tmp_path, [{"name": "a", "base_url": sim.base_url}])
        load = loader(cfg_file)
        async with running_daemon(load(), load_config=load) as d:
            before = d.config
            write_config(cfg_file, tmp_path, [{"name": "a", "base_url": sim.base_url}], garbage=1)
            assert not await d.reload(load)
            assert d.config is before and d.relay.config is before
            seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None


async def test_unchanged_upstreams_keep_their_breaker_and_budget(tmp_path: Path) -> None:
    cfg_file = tmp_path / "intact.toml"
    async with fast_sim() as a, fast_sim() as b:
        write_config(cfg_file, tmp_path, [{"name": "a", "base_url": a.base_url}])
        load = loader(cfg_file)
        async with running_daemon(load(), load_config=load) as d:
            (runtime,) = d.relay.upstreams
            for _ in range(20):
                permit = runtime.breaker.try_acquire()
                assert permit is not None
                permit.record(CallOutcome.FAILURE)
            assert runtime.breaker.state is BreakerState.OPEN
            write_config(
                cfg_file,
                tmp_path,
                [{"name": "a", "base_url": a.base_url}, {"name": "b", "base_url": b.base_url}],
            )
            assert await d.reload(load)
            kept, _ = d.relay.upstreams
            assert kept is runtime and kept.breaker.state is BreakerState.OPEN
            # The open breaker sends the request to the new upstream.
            seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and b.stats.chat_requests == 1 and a.stats.chat_requests == 0


async def test_a_rotated_api_key_file_applies_on_reload(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-first\n")
    cfg_file = tmp_path / "intact.toml"
    async with fast_sim(api_key="sk-first") as sim:
        up = {"name": "a", "base_url": sim.base_url, "api_key_file": str(key_file)}
        write_config(cfg_file, tmp_path, [up])
        load = loader(cfg_file)
        async with running_daemon(load(), load_config=load) as d:
            assert (await stream_chat(sdk(d.socket_path))).error is None
            sim.settings = type(sim.settings)(**{**sim.settings.__dict__, "api_key": "sk-second"})
            key_file.write_text("sk-second\n")
            refused = await stream_chat(sdk(d.socket_path))
            assert await d.reload(load)
            accepted = await stream_chat(sdk(d.socket_path))
    assert refused.error is not None and getattr(refused.error, "status_code", None) == 401
    assert accepted.error is None and accepted.text == EXPECTED.content


def test_sighup_and_intact_reload_reload_a_running_daemon(tmp_path: Path) -> None:
    cfg_file = tmp_path / "intact.toml"
    sock = tmp_path / "intact.sock"
    write_config(cfg_file, tmp_path, [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}])
    env = {**os.environ, "INTACT_TELEMETRY__LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [*INTACT, "run", "--config", str(cfg_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        admin = None
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while admin is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if '"intact_started"' in line:
                admin = line.split('"admin":"', 1)[1].split('"', 1)[0]
        assert admin, lines
        assert sock.exists()
        two = [
            {"name": "a", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "b", "base_url": "http://127.0.0.1:10/v1"},
        ]
        write_config(cfg_file, tmp_path, two)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if '"reloaded"' in line:
                break
        assert any('"reloaded"' in ln and '"b"' in ln for ln in lines), lines
        state = httpx.get(admin + "/debug/state", timeout=5).json()
        assert [u["name"] for u in state["upstreams"]] == ["a", "b"]
        # `intact reload` through the admin listener; a broken file is refused.
        ok = subprocess.run(
            [*INTACT, "reload", "--admin", admin], capture_output=True, text=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
        write_config(cfg_file, tmp_path, [{"name": "a", "base_url": "x"}])
        bad = subprocess.run(
            [*INTACT, "reload", "--admin", admin], capture_output=True, text=True, timeout=30
        )
        assert bad.returncode == 1 and "rejected" in bad.stderr
        assert proc.poll() is None  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
