"""The ways an app's request can reach the simulated upstream, one module each.

direct (the app talks to the upstream), intact (the daemon as deployed), byte pipe (the
floor for a Python relay) and LiteLLM's proxy. Each path starts its own process (none for
direct) and says where the load client sends requests and which process to measure.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Target:
    """Where the load client sends its requests."""

    url: str
    unix_socket: str | None = None
    api_key: str = "sk-bench"


class RelayPath(Protocol):
    name: str
    pid: int | None
    """The process whose CPU and memory are the path's cost (None: nothing in between)."""
    note: str
    """Version or setting worth printing beside the numbers."""

    def start(self, upstream: str) -> None:
        """Start in front of the upstream at ``upstream`` (scheme://host:port)."""

    def target(self) -> Target: ...

    def stop(self) -> None: ...


class StartError(RuntimeError):
    """A path could not be started; the message says why (with its log's tail)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def spawn(
    cmd: list[str],
    log: Path,
    ready: Callable[[], bool],
    *,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (output to ``log``) and wait until ``ready()``; StartError if it exits
    or is not ready within ``timeout`` seconds."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return proc
        if proc.poll() is not None:
            raise StartError(f"{Path(cmd[0]).name} exited ({proc.returncode}): {tail(log)}")
        time.sleep(0.1)
    stop(proc)
    raise StartError(f"not ready after {timeout:g}s: {tail(log)}")


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(log: Path, chars: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-chars:].strip()
    return ""
