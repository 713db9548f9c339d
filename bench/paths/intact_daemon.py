"""intact as deployed: `intact run` with a config file, Prometheus exporter on.

Some settings differ from the defaults, so the numbers measure the relay rather than its
bounds: the upstream's stream limit and queue and the connections allowed per app process
are as large as the biggest workload; the upstream connect timeout is 30 s, the patience of
the other paths (a simulator starved of CPU while 10,000 streams connect answers SYNs
late, and 5 s would turn that into failed attempts, an open breaker and 503s); and the
backoff has no jitter, so the wait before a resume is exactly ``retry.base_delay`` and the
recovery time beyond it can be computed.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from paths import Target, free_port, spawn, stop

BACKOFF = 0.25  # retry.base_delay (the default); jitter "none" makes it the exact wait


class IntactDaemon:
    name = "intact"
    note = "intact run, Prometheus exporter on, log level info"

    def __init__(
        self,
        workdir: Path,
        max_streams: int,
        *,
        name: str = "intact",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        stem = name.replace(" ", "-")
        self.socket = workdir / f"{stem}.sock"
        self.config = workdir / f"{stem}.toml"
        self.log = workdir / f"{stem}.log"
        self.max_streams = max_streams
        self.env = env  # None: this process's environment (bench/ab.py runs variants)
        self.metrics_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def start(self, upstream: str) -> None:
        self.socket.unlink(missing_ok=True)  # a stale file would look ready
        limit = self.max_streams + 64
        self.config.write_text(
            f"""[server]
socket = "{self.socket}"
metrics_addr = "127.0.0.1:{self.metrics_port}"
max_connections_per_peer = {limit}

[retry]
base_delay = {BACKOFF}
jitter = "none"

[stream]
connect_timeout = 30.0

[[upstreams]]
name = "sim"
base_url = "{upstream}/v1"
resume = "prefill"
max_concurrent_streams = {limit}
max_queued = {limit}
"""
        )
        cmd = [sys.executable, "-m", "intact", "run", "--config", str(self.config)]
        self._proc = spawn(cmd, self.log, self.socket.exists, env=self.env)
        self.pid = self._proc.pid

    def target(self) -> Target:
        return Target("http://intact/v1/chat/completions", unix_socket=str(self.socket))

    def stop(self) -> None:
        stop(self._proc, grace=40.0)  # the daemon drains in-flight streams first

    def recovery_totals(self) -> tuple[float, int]:
        """intact's own recovery histogram (sum of seconds, count): from the interruption
        being noticed to the first token delivered after it, summed over upstreams."""
        text = ""
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        total, count = 0.0, 0
        for name, value in re.findall(
            r"^intact_recovery_duration_seconds_(sum|count)\{[^}]*\} (\S+)$", text, re.M
        ):
            if name == "sum":
                total += float(value)
            else:
                count += int(float(value))
        return total, count
