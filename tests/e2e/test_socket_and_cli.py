"""The socket file, the CLI and config validation, as a new user meets them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intact import __version__
from intact.config import ConfigError, Overrides, resolve
from intact.unix_socket import SocketInUseError
from support import daemon_for, fast_sim, sdk, stream_chat

INTACT = [sys.executable, "-m", "intact"]


async def test_socket_file_has_mode_0660(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        assert stat.S_IMODE(os.stat(d.socket_path).st_mode) == 0o660
    assert not Path(d.socket_path).exists()  # removed at shutdown


async def test_socket_mode_is_configurable(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, server={"socket_mode": "0600"}) as d:
        assert stat.S_IMODE(os.stat(d.socket_path).st_mode) == 0o600


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "intact.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        assert (await stream_chat(sdk(d.socket_path))).error is None


async def test_live_socket_makes_a_second_daemon_refuse(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        with pytest.raises(SocketInUseError, match="already listening"):
            async with daemon_for(tmp_path, sim):
                pass
        # The first daemon is untouched.
        assert (await stream_chat(sdk(d.socket_path))).error is None


def test_version() -> None:
    out = subprocess.run([*INTACT, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"intact {__version__}"


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    cfg = tmp_path / "intact.toml"
    cfg.write_text(
        '[retry]\nmax_attempts = 3\n\n[[upstreams]]\nname = "vllm"\n'
        'base_url = "http://127.0.0.1:8000/v1"\nresume = "prefill"\n'
        "[upstreams.breaker]\nminimum_calls = 5\n"
    )
    out = subprocess.run([*INTACT, "check-config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"minimum_calls": 5' in out.stdout


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[retry]\nmax_atempts = 3\n", "unknown key retry.max_atempts"),
        ('[retry]\njitter = "half"\n', "retry.jitter = 'half'"),
        ("[breaker]\nfailure_rate_threshold = 1.5\n", "<= 1"),
        ('[[upstreams]]\nname = "a"\nbase_url = "ftp://x"\n', "upstreams[0].base_url"),
        ('[[upstreams]]\nname = "a"\nresume = "magic"\n', "upstreams[0].resume"),
        ("[stream]\nstall_timeout = -1\n", "stream.stall_timeout = -1"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    for cmd in (
        ["check-config", str(cfg)],
        ["run", "--config", str(cfg), "--socket", str(tmp_path / "s.sock")],
    ):
        out = subprocess.run([*INTACT, *cmd], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert needle in out.stderr


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[server]\nsocket = "/from/file.sock"\nmetrics_addr = "127.0.0.1:1111"\n'
        "[retry]\nmax_attempts = 2\n"
    )
    env = {
        "INTACT_CONFIG": str(cfg),
        "INTACT_SOCKET": "/from/env.sock",
        "INTACT_RETRY__MAX_ATTEMPTS": "4",
    }
    from_env = resolve(Overrides(), environ=env)
    assert from_env.server.socket == "/from/env.sock"
    assert from_env.server.metrics_addr == "127.0.0.1:1111"
    assert from_env.retry.max_attempts == 4
    flags = resolve(
        Overrides(socket="/from/flag.sock", upstream="http://127.0.0.1:9/v1", resume="prefix"),
        environ=env,
    )
    assert flags.server.socket == "/from/flag.sock"
    assert [(u.name, u.base_url, u.resume) for u in flags.upstreams] == [
        ("default", "http://127.0.0.1:9/v1", "prefix")
    ]


def test_unknown_intact_env_var_is_refused() -> None:
    with pytest.raises(ConfigError, match="INTACT_RETRY__MAX_ATEMPTS"):
        resolve(Overrides(), environ={"INTACT_RETRY__MAX_ATEMPTS": "3"})


def test_without_any_upstream_the_default_is_openai() -> None:
    cfg = resolve(Overrides(), environ={})
    (up,) = cfg.upstreams
    assert (up.base_url, up.api_key_env, up.resume) == (
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        "instruct",
    )


def test_intact_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "run.sock"
    proc = subprocess.Popen(
        [
            *INTACT,
            "run",
            "--socket",
            str(sock),
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists()
        second = subprocess.run(
            [
                *INTACT,
                "run",
                "--socket",
                str(sock),
                "--upstream",
                "http://127.0.0.1:9/v1",
                "--metrics-addr",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "already listening" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert not sock.exists()


async def test_daemon_keeps_running_without_upstream_connectivity(tmp_path: Path) -> None:
    # Upstream on a closed port: requests fail explicitly, the daemon stays up.
    async with daemon_for(
        tmp_path,
        [],
        upstreams=[{"name": "gone", "base_url": "http://127.0.0.1:9/v1"}],
        retry={"max_attempts": 2},
    ) as d:
        seen = await stream_chat(sdk(d.socket_path))
        assert seen.error is not None and getattr(seen.error, "status_code", None) == 502
        await asyncio.sleep(0)
