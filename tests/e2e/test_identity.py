"""Per-app identity and access on the socket: who the peer is (SO_PEERCRED), whether it may
use intact, which app it is (a bounded label on metrics, an attribute on spans), how many
streams that app may have, and where the default socket lives."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from intact.config import ConfigError, build_config, default_socket_path
from intact.daemon import RunningDaemon, running_daemon
from intact.peer import Peer, peer_credentials
from intact.simulator import SimulatedUpstream
from intact.telemetry.runtime import start_telemetry
from intact.unix_socket import UnsafeSocketDirError, prepare_default_socket_dir
from support import MESSAGES, fast_config, fast_sim, raw_client, restored_logging, sdk, stream_chat
from telemetry.helpers import Sinks, scrape, scraped

UID, GID, PID = os.getuid(), os.getgid(), os.getpid()
NOT_US = UID + 4242  # a uid this test process does not have
CHAT = {"model": "sim-1", "messages": MESSAGES, "stream": True}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield from restored_logging()


@contextlib.asynccontextmanager
async def observed_daemon(
    tmp_path: Path, sim: SimulatedUpstream, **over: Any
) -> AsyncIterator[tuple[RunningDaemon, Sinks]]:
    """A daemon with real telemetry into in-memory sinks (logs as JSON lines)."""
    over.setdefault("telemetry", {"log_format": "json"})
    ups = [{"name": "sim", "base_url": sim.base_url, "resume": "prefill"}]
    cfg = fast_config(tmp_path, ups, **over)
    spans, reader, stream = InMemorySpanExporter(), InMemoryMetricReader(), io.StringIO()
    rt = start_telemetry(cfg, span_exporter=spans, metric_readers=[reader], log_stream=stream)
    sinks = Sinks(rt, spans, reader, stream)
    try:
        async with running_daemon(
            cfg, telemetry=rt.telemetry, metrics_handler=rt.metrics_handler
        ) as d:
            yield d, sinks
    finally:
        rt.shutdown(timeout=1.0)


def refusals(sinks: Sinks) -> list[dict[str, Any]]:
    return [line for line in sinks.log_lines() if line["event"] == "app_refused"]


async def debug_state(d: RunningDaemon) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{d.admin_url}/debug/state") as resp:
        state: dict[str, Any] = await resp.json()
    return state


# --- who the peer is --------------------------------------------------------------------


def test_peer_credentials_name_the_connecting_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == Peer(pid=PID, uid=UID, gid=GID)


def test_a_peer_is_counted_by_pid_or_by_uid_when_its_pid_is_hidden() -> None:
    assert Peer(pid=31, uid=1000, gid=1000).key == "pid:31"
    assert Peer(pid=0, uid=1000, gid=1000).key == "uid:1000"  # another pid namespace


# --- which app it is --------------------------------------------------------------------


async def test_the_app_is_chosen_by_the_peer_uid_on_metrics_spans_and_logs(
    tmp_path: Path,
) -> None:
    apps = [{"name": "checkout", "uids": [UID]}, {"name": "search", "uids": [NOT_US]}]
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, apps=apps) as (d, sinks):
        assert (await stream_chat(sdk(d.socket_path))).error is None
        samples = await scrape(d.admin_url)
    assert scraped(samples, "intact_app_streams_total", "app", "outcome") == {
        ("checkout", "completed"): 1
    }
    # Every configured app (and 'other') has its series from the start.
    for app in ("checkout", "search", "other"):
        key = ("intact_app_streams_total", frozenset({("app", app), ("outcome", "completed")}))
        assert key in samples
    [server] = [s for s in sinks.finished_spans() if s.kind is SpanKind.SERVER]
    assert server.attributes is not None and server.attributes["intact.app"] == "checkout"
    [done] = [line for line in sinks.log_lines() if line["event"] == "request_done"]
    assert done["app"] == "checkout"


async def test_a_peer_matching_no_app_is_other(tmp_path: Path) -> None:
    apps = [{"name": "search", "uids": [NOT_US]}]
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, apps=apps) as (d, _sinks):
        assert (await stream_chat(sdk(d.socket_path))).error is None
        samples = await scrape(d.admin_url)
    assert scraped(samples, "intact_app_streams_total", "app") == {("other",): 1}


@pytest.mark.parametrize(
    ("trusted", "header", "app"),
    [
        (False, "search", "other"),  # untrusted: the uid decides
        (True, "search", "search"),  # trusted: a configured name is taken
        (True, "made-up-app", "other"),  # never a label the config does not name
    ],
)
async def test_the_intact_app_header_counts_only_when_trusted(
    tmp_path: Path, trusted: bool, header: str, app: str
) -> None:
    over: dict[str, Any] = {
        "apps": [{"name": "search", "uids": [NOT_US]}],
        "server": {"trust_app_header": trusted},
    }
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, **over) as (d, _sinks):
        seen = await stream_chat(sdk(d.socket_path), extra_headers={"intact-app": header})
        assert seen.error is None
        samples = await scrape(d.admin_url)
    assert scraped(samples, "intact_app_streams_total", "app") == {(app,): 1}
    assert {labels for (name, labels) in samples if name == "intact_app_streams_total"} <= {
        frozenset({("app", a), ("outcome", o)})
        for a in ("search", "other")
        for o in ("completed", "recovered", "failed", "rejected", "cancelled")
    }


# --- whether it may use intact ----------------------------------------------------------


async def test_a_peer_outside_the_access_list_gets_403_and_a_log_line(tmp_path: Path) -> None:
    over = {"server": {"allowed_uids": [NOT_US]}}
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, **over) as (d, sinks):
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=CHAT)
            models = await client.get("/v1/models")
        samples = await scrape(d.admin_url)
        assert sim.stats.chat_requests == 0
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert resp.json()["error"]["code"] == "peer_not_allowed"
    assert models.status_code == 403  # every route, not only completions
    assert resp.headers.get("connection") == "close"
    line = refusals(sinks)[0]
    assert (line["level"], line["reason"]) == ("warning", "forbidden")
    assert (line["uid"], line["gid"], line["pid"]) == (UID, GID, PID)
    assert scraped(samples, "intact_app_refused_total", "app", "reason") == {
        ("other", "forbidden"): 2
    }


async def test_the_sdk_raises_permission_denied_for_a_refused_peer(tmp_path: Path) -> None:
    import openai

    async with (
        fast_sim() as sim,
        observed_daemon(tmp_path, sim, server={"allowed_uids": [NOT_US]}) as (d, _),
    ):
        seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.PermissionDeniedError)


async def test_an_allowed_gid_admits_the_peer(tmp_path: Path) -> None:
    over = {"server": {"allowed_uids": [NOT_US], "allowed_gids": [GID]}}
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, **over) as (d, sinks):
        assert (await stream_chat(sdk(d.socket_path))).error is None
    assert refusals(sinks) == []


async def test_an_allowed_uid_is_served(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        observed_daemon(tmp_path, sim, server={"allowed_uids": [UID]}) as (d, _),
    ):
        assert (await stream_chat(sdk(d.socket_path))).error is None


# --- how many streams it may have -------------------------------------------------------


async def test_an_app_over_its_stream_limit_gets_429_with_retry_after(tmp_path: Path) -> None:
    apps = [{"name": "checkout", "uids": [UID], "max_concurrent_streams": 1}]
    async with (
        fast_sim(tok_per_s=20.0) as sim,
        observed_daemon(tmp_path, sim, apps=apps) as (d, sinks),
    ):
        assert d.access is not None
        async with (
            raw_client(d.socket_path) as first_client,
            first_client.stream("POST", "/v1/chat/completions", json=CHAT) as first,
        ):
            assert first.status_code == 200
            lines = first.aiter_lines()  # kept: a dropped iterator closes the stream
            await anext(lines)  # the first stream is live
            async with raw_client(d.socket_path) as client:
                over = await client.post("/v1/chat/completions", json=CHAT)
            assert over.status_code == 429
            assert over.headers["retry-after"] == "1"
            assert over.json()["error"]["code"] == "too_many_streams"
            [checkout] = [a for a in (await debug_state(d))["apps"] if a["name"] == "checkout"]
            assert checkout["active_streams"] == 1
            assert checkout["max_concurrent_streams"] == 1
            assert checkout["refused"]["stream_limit"] == 1
        # The first stream's app went away: its slot is free again.
        for _ in range(100):
            if d.access.active("checkout") == 0:
                break
            await asyncio.sleep(0.02)
        assert d.access.active("checkout") == 0
        assert (await stream_chat(sdk(d.socket_path), max_tokens=5)).error is None
    [line] = refusals(sinks)
    assert (line["reason"], line["app"], line["status"]) == ("stream_limit", "checkout", 429)


async def test_stream_slots_are_returned_when_streams_end(tmp_path: Path) -> None:
    apps = [{"name": "checkout", "uids": [UID], "max_concurrent_streams": 2}]
    async with fast_sim() as sim, observed_daemon(tmp_path, sim, apps=apps) as (d, _):
        client = sdk(d.socket_path)
        for _ in range(3):
            results = await asyncio.gather(*(stream_chat(client) for _ in range(2)))
            assert [r.error for r in results] == [None, None]
        assert d.access is not None and d.access.active("checkout") == 0


# --- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"apps": [{"name": "other"}]}, "'other' is the label of peers that match no app"),
        ({"apps": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"apps": [{"uids": [1]}]}, "apps[0].name is required"),
        (
            {"apps": [{"name": "a", "uids": [7]}, {"name": "b", "uids": [7]}]},
            "uid 7 already belongs to app 'a'",
        ),
        ({"apps": [{"name": "a b"}]}, "apps[0].name = 'a b'"),
        ({"server": {"allowed_uids": ["root"]}}, "server.allowed_uids[0] = 'root'"),
        ({"server": {"allowed_gids": [-1]}}, "server.allowed_gids[0] = -1"),
    ],
)
def test_bad_identity_config_is_refused_naming_the_key(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_config(raw)
    assert needle in str(exc.value)


# --- where the default socket lives -----------------------------------------------------


def test_default_socket_path_is_never_directly_in_a_shared_directory() -> None:
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == (
        "/run/user/1000/intact.sock"
    )
    assert default_socket_path({}, 0) == "/run/intact/intact.sock"
    assert default_socket_path({}, 1000) == "/tmp/intact-1000/intact.sock"
    assert default_socket_path({"TMPDIR": "/var/tmp"}, 1000) == "/var/tmp/intact-1000/intact.sock"


def test_the_default_socket_directory_is_created_private(tmp_path: Path) -> None:
    created = tmp_path / f"intact-{UID}"
    prepare_default_socket_dir(str(created), euid=UID)
    # 0700; root's /run/intact is 0755 so apps of other users can reach the 0660 socket.
    assert stat.S_IMODE(created.stat().st_mode) == (0o755 if UID == 0 else 0o700)
    prepare_default_socket_dir(str(created), euid=UID)  # ours already: accepted again


def test_a_socket_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "intact-theirs"
    theirs.mkdir(mode=0o700)
    with pytest.raises(UnsafeSocketDirError, match=f"owned by uid {UID}, not intact's uid"):
        prepare_default_socket_dir(str(theirs), euid=NOT_US)


def test_a_socket_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafeSocketDirError, match="mode 1777: other users can write"):
        prepare_default_socket_dir(str(shared), euid=UID)


def test_a_symlinked_socket_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeSocketDirError, match="not a directory"):
        prepare_default_socket_dir(str(link), euid=UID)


async def test_the_daemon_uses_the_private_default_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "resume": "prefill"}]
        cfg = fast_config(tmp_path, ups, server={"socket": ""})
        async with running_daemon(cfg) as d:
            assert d.socket_path == str(runtime / "intact.sock")
            assert (await stream_chat(sdk(d.socket_path))).error is None


async def test_the_daemon_refuses_a_default_socket_in_a_shared_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    cfg = fast_config(tmp_path, [{"name": "x", "base_url": "http://127.0.0.1:9/v1"}],
                      server={"socket": ""})  # fmt: skip
    with pytest.raises(UnsafeSocketDirError):
        async with running_daemon(cfg):
            pass
    assert not (shared / "intact.sock").exists()


def test_intact_run_explains_an_unsafe_default_socket_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(shared)}
    env.pop("INTACT_SOCKET", None)
    out = subprocess.run(
        [sys.executable, "-m", "intact", "run", "--upstream", "http://127.0.0.1:9/v1",
         "--metrics-addr", "off"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    assert "other users can write to it" in out.stderr
