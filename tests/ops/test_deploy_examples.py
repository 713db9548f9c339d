"""The deployment examples: the example config passes `intact check-config`, and the systemd
unit agrees with it (socket directory, drain time) and passes `systemd-analyze verify`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from intact.telemetry.runtime import DEFAULT_SHUTDOWN_TIMEOUT

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "deploy" / "intact.example.toml"
UNIT = REPO / "deploy" / "systemd" / "intact.service"
INTACT = Path(sys.executable).with_name("intact")  # the console script of this environment


@pytest.fixture(scope="module")
def example_config() -> dict[str, Any]:
    """The example config as `intact check-config` resolves it."""
    done = subprocess.run(
        [str(INTACT), "check-config", str(EXAMPLE_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def unit_settings() -> dict[str, list[str]]:
    """Key -> values of the unit file (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_example_config_is_a_vllm_primary_with_an_openai_fallback(
    example_config: dict[str, Any],
) -> None:
    cfg = example_config
    vllm, openai = cfg["upstreams"]
    assert (vllm["name"], vllm["resume"]) == ("vllm", "prefill")
    assert (openai["name"], openai["resume"]) == ("openai", "instruct")
    assert vllm["api_key_env"] and openai["api_key_env"] == "OPENAI_API_KEY"
    assert vllm["models"] and not openai["models"]  # the fallback serves every model
    # the per-upstream breaker override, on top of the global [breaker]
    assert cfg["breaker"]["minimum_calls"] == 20
    assert openai["breaker"]["minimum_calls"] == 10
    assert vllm["breaker"] == cfg["breaker"]


def test_unit_runs_the_example_config_with_its_socket_directory(
    example_config: dict[str, Any],
) -> None:
    cfg = example_config
    unit = unit_settings()
    assert unit["ExecStart"] == ["/usr/local/bin/intact run --config /etc/intact/intact.toml"]
    assert unit["RuntimeDirectory"] == ["intact"]
    assert cfg["server"]["socket"] == "/run/intact/intact.sock"
    assert unit["KillSignal"] == ["SIGTERM"]
    assert any(path.endswith("intact.env") for path in unit["EnvironmentFile"])
    assert unit.get("DynamicUser") == ["yes"] or unit["User"] == ["intact"]


def test_unit_waits_longer_than_the_drain_timeout_before_killing(
    example_config: dict[str, Any],
) -> None:
    drain = example_config["server"]["drain_timeout"]
    (stop,) = unit_settings()["TimeoutStopSec"]
    seconds = float(stop.removesuffix("s"))
    assert seconds > drain + DEFAULT_SHUTDOWN_TIMEOUT, (seconds, drain)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH")
    # verify insists that ExecStart exists: point it at this environment's intact
    unit = tmp_path / "intact.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/intact", str(INTACT)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact.service" not in done.stderr, done.stderr
