"""The daemon is what the daemon needs: its runtime dependencies leave out the demo's (rich,
openai, httpx, anthropic), which come with the extra `intact[demo]`, and `intact run`,
`check-config` and `simulate-upstream` work with those packages made unimportable (as after
`pip install intact` without the extra)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
DEMO_ONLY = {"rich", "openai", "httpx", "anthropic"}

# `intact` with the demo's packages unimportable, whether installed here or not.
WITHOUT_DEMO_EXTRA = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class DemoExtraNotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {sorted(DEMO_ONLY)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, DemoExtraNotInstalled())
    from intact.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def intact_without_demo(*args: str) -> list[str]:
    return [sys.executable, "-c", WITHOUT_DEMO_EXTRA, *args]


def environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("INTACT_", "OTEL_"))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_demo_packages_are_an_extra_that_dev_pulls_in() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("[")[0].split("=")[0].strip().lower() for r in requirements}

    assert not names(project["dependencies"]) & DEMO_ONLY
    assert names(project["optional-dependencies"]["demo"]) == DEMO_ONLY
    assert "intact[demo]" in project["optional-dependencies"]["dev"]
    makefile = (REPO / "Makefile").read_text()
    assert "-e '.[demo,dev]'" in makefile  # the STAMP `make demo` and `make test` depend on


def test_the_blocker_really_refuses_the_demo_packages() -> None:
    done = subprocess.run(
        intact_without_demo("demo", "--duration", "1"),
        capture_output=True,
        text=True,
        timeout=30,
        env=environ(),
        check=False,
    )
    assert done.returncode != 0
    assert "ModuleNotFoundError: No module named 'rich" in done.stderr


def test_run_help_and_check_config_need_no_demo_package() -> None:
    for args in (("run", "--help"), ("check-config", str(REPO / "deploy" / "intact.example.toml"))):
        done = subprocess.run(
            intact_without_demo(*args),
            capture_output=True,
            text=True,
            timeout=30,
            env=environ(),
            check=False,
        )
        assert done.returncode == 0, (args, done.stderr)


def wait_for(url: str, proc: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bytes(resp.read())
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def test_the_daemon_and_the_simulator_run_without_any_demo_package(tmp_path: Path) -> None:
    sim_port, admin_port = free_port(), free_port()
    simulator = subprocess.Popen(
        intact_without_demo("simulate-upstream", "--port", str(sim_port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environ(),
    )
    daemon_log = tmp_path / "intact.log"
    with daemon_log.open("wb") as log:
        daemon = subprocess.Popen(
            intact_without_demo(
                "run",
                "--socket",
                str(tmp_path / "intact.sock"),
                "--metrics-addr",
                f"127.0.0.1:{admin_port}",
                "--upstream",
                f"http://127.0.0.1:{sim_port}/v1",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ(),
        )
    try:
        assert b'"data"' in wait_for(f"http://127.0.0.1:{sim_port}/v1/models", simulator)
        assert b"intact_breaker_state" in wait_for(f"http://127.0.0.1:{admin_port}/metrics", daemon)
        assert (tmp_path / "intact.sock").is_socket()
    finally:
        for proc in (daemon, simulator):
            proc.send_signal(signal.SIGTERM)
        # intact drains and exits 0; the simulator is simply stopped
        assert daemon.wait(timeout=20) == 0, daemon_log.read_text()
        simulator.wait(timeout=10)
