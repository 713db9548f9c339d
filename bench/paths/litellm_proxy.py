"""LiteLLM's proxy, installed by the bench into a virtual environment of its own.

The venv lives outside the repository (``$XDG_CACHE_HOME/intact-bench``, else
``~/.cache/intact-bench``) and is reused across runs. LiteLLM is pinned: 1.106.12 is the
newest release whose ``[proxy]`` extra installs from PyPI (1.108+ pin companion packages
that were never published there). Run with its defaults: one worker, no database, the
master key it insists on, the simulator as an OpenAI-compatible ``api_base``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

from paths import StartError, Target, free_port, spawn, stop, tail

VERSION = "1.106.12"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "intact-bench"


class LiteLLMProxy:
    name = "LiteLLM"
    note = f"litellm[proxy]=={VERSION}, 1 worker, defaults"

    def __init__(self, workdir: Path, venv: Path | None = None) -> None:
        self.venv = venv or cache_dir() / f"litellm-{VERSION}"
        self.config = workdir / "litellm.yaml"
        self.log = workdir / "litellm.log"
        self.port = free_port()
        self.key = "sk-" + secrets.token_hex(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def install(self) -> None:
        """Create the venv and install LiteLLM unless a previous run did; StartError if
        it cannot be installed."""
        marker = self.venv / ".installed"
        if marker.exists():
            return
        log = self.venv.with_suffix(".install.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"installing litellm[proxy]=={VERSION} into {self.venv} (once; a minute or two)")
        with log.open("wb") as out:
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(self.venv)],
                [
                    str(self.venv / "bin" / "pip"),
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    f"litellm[proxy]=={VERSION}",
                ],
            ]
            for cmd in steps:
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    raise StartError(f"`{' '.join(cmd[-2:])}` failed: {tail(log, 600)}")
        marker.touch()

    def start(self, upstream: str) -> None:
        self.install()
        self.config.write_text(
            "model_list:\n"
            "  - model_name: sim-1\n"
            "    litellm_params:\n"
            "      model: openai/sim-1\n"
            f"      api_base: {upstream}/v1\n"
            "      api_key: sk-bench\n"
        )
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": self.key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
            "LITELLM_LOG": "ERROR",
        }
        cmd = [
            str(self.venv / "bin" / "litellm"),
            "--config",
            str(self.config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ]
        self._proc = spawn(cmd, self.log, self._live, timeout=240.0, env=env)
        self.pid = self._proc.pid

    def _live(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/health/liveliness"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def target(self) -> Target:
        return Target(f"http://127.0.0.1:{self.port}/v1/chat/completions", api_key=self.key)

    def stop(self) -> None:
        stop(self._proc)
