"""The byte pipe (``byte_pipe.py``) as a path: its own process on a Unix socket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paths import Target, spawn, stop

SERVER = Path(__file__).with_name("byte_pipe.py")


class BytePipe:
    name = "byte pipe"
    note = "aiohttp, parses nothing, Unix socket"

    def __init__(
        self, workdir: Path, *, name: str = "byte pipe", env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        stem = "pipe" if name == "byte pipe" else name.replace(" ", "-")
        self.socket = workdir / f"{stem}.sock"
        self.log = workdir / f"{stem}.log"
        self.env = env  # None: this process's environment (bench/ab.py runs variants)
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def start(self, upstream: str) -> None:
        self.socket.unlink(missing_ok=True)  # a stale file would look ready
        cmd = [sys.executable, str(SERVER), "--socket", str(self.socket), "--upstream", upstream]
        self._proc = spawn(cmd, self.log, self.socket.exists, env=self.env)
        self.pid = self._proc.pid

    def target(self) -> Target:
        return Target("http://pipe/v1/chat/completions", unix_socket=str(self.socket))

    def stop(self) -> None:
        stop(self._proc)
