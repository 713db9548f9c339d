"""`intact demo` end to end, its view and config, and a small chaos run of the invariant."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

from intact.demo.outcomes import BreakerEvent
from intact.demo.run import DemoOptions, demo_config
from intact.demo.view import DemoSnapshot, UpstreamView, plain_line, render_live, summary_text
from intact.resilience.breaker import BreakerState

ROOT = Path(__file__).resolve().parents[2]


def demo(*flags: str) -> list[str]:
    return [sys.executable, "-m", "intact", "demo", "--no-live", "--seed", "3", *flags]


def summary_value(output: str, label: str) -> str:
    match = re.search(rf"^  {label}\s+(.+)$", output, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{output}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_runs_for_its_duration_and_prints_a_summary() -> None:
    started = time.monotonic()
    done = subprocess.run(
        demo("--duration", "5"), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "intact demo summary" in out
    assert int(summary_value(out, "streams").split()[0].replace(",", "")) > 0
    assert summary_value(out, "broken").startswith("0 ")
    for label in (
        "delivered exact",
        "recovered",
        "explicit errors",
        "interruption rate",
        "TTFT p50 / p95",
        "breaker events",
    ):
        summary_value(out, label)
    assert "Traceback" not in out + done.stderr
    assert took < 30


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("api", ["messages", "responses"])
def test_demo_streams_the_other_apis(api: str) -> None:
    done = subprocess.run(
        demo("--duration", "4", "--api", api, "--fault-rate", "0.2"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert int(summary_value(out, "streams").split()[0].replace(",", "")) > 0
    assert summary_value(out, "broken").startswith("0 ")
    attempts = re.search(r"of ([\d,]+) upstream attempts", summary_value(out, "interruption rate"))
    assert attempts and int(attempts.group(1).replace(",", "")) > 0
    assert "Traceback" not in out + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        demo(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the load runs
            if line.startswith("t="):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "intact demo summary" in out
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err


def test_demo_config_keeps_the_file_but_replaces_socket_admin_and_upstreams(
    tmp_path: Path,
) -> None:
    file = tmp_path / "intact.toml"
    file.write_text(
        "[stream]\nstall_timeout = 7.0\n[retry]\nmax_attempts = 3\n"
        '[[upstreams]]\nname = "real"\nbase_url = "https://api.openai.com/v1"\n'
    )
    opts = DemoOptions(
        duration=1.0,
        concurrency=1,
        fault_rate=0.0,
        seed=1,
        tok_per_s=10.0,
        down_at=None,
        down_for=1.0,
        metrics_addr="127.0.0.1:0",
        config_file=str(file),
        live=False,
    )
    config = demo_config(opts, "http://127.0.0.1:9/v1", str(tmp_path / "s.sock"))
    assert [u.name for u in config.upstreams] == ["sim"]
    assert config.upstreams[0].stream.stall_timeout == 7.0
    assert config.upstreams[0].stream.first_token_timeout == 5.0  # the demo's default
    assert config.upstreams[0].retry.max_attempts == 3
    assert config.server.socket == str(tmp_path / "s.sock")
    assert config.server.metrics_addr == "127.0.0.1:0"


def snapshot(**changes: object) -> DemoSnapshot:
    values: dict[str, object] = dict(
        elapsed=10.0,
        streams_done=100,
        rate=10.0,
        active_streams=16,
        exact=99,
        recovered=3,
        explicit_errors=1,
        silent=0,
        garbled=0,
        upstream_attempts=104,
        faults_injected=4,
        down_rejections=0,
        fault_rate=0.032,
        upstreams=(UpstreamView("sim", BreakerState.OPEN, 12.0, 2),),
        error_codes=(("stream_interrupted:attempts_exhausted", 1),),
        ttft_p50=0.25,
        ttft_p95=0.4,
    )
    values.update(changes)
    return DemoSnapshot(**values)  # type: ignore[arg-type]


def test_live_view_shows_breaker_state_and_broken_streams_in_red() -> None:
    console = Console(record=True, width=100, color_system="standard", force_terminal=True)
    console.print(render_live(snapshot(garbled=2)))
    styled = console.export_text(styles=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", styled)
    assert "breaker open" in plain and "retry budget 12" in plain
    assert "reached app BROKEN  2" in plain
    assert "\x1b[1;31m2  (silent truncation 0, garbled 2)" in styled  # bold red


def test_plain_line_and_summary_carry_the_numbers() -> None:
    s = snapshot()
    line = plain_line(s)
    assert "streams=100" in line and "broken=0" in line and "sim:open" in line
    event = BreakerEvent(105.0, "sim", BreakerState.CLOSED, BreakerState.OPEN)
    text = summary_text(s, [event], started_at=100.0)
    assert "  broken " in text and "0 (silent truncation 0, garbled 0)" in text
    assert "sim closed->open at 5.0 s" in text
    assert "4 of 104 upstream attempts (3.8%" in text


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("intact_bench_chaos", ROOT / "bench/chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(30)
async def test_small_chaos_run_never_lets_a_broken_stream_reach_the_app() -> None:
    chaos = load_chaos()
    opts = chaos.ChaosOptions(
        streams=60, concurrency=10, tok_per_s=400.0, ttft=0.02, stall_timeout=0.3, min_exact_pct=0.0
    )
    started = time.monotonic()
    report = await chaos.run_chaos(opts)
    stats = report.stats
    details = chaos.report_text(report)
    assert stats.done == 60 and report.unjudged == 0, details
    assert stats.silent == 0 and stats.garbled == 0, details
    assert stats.done - stats.exact == stats.explicit_errors, details
    assert sum(report.simulator.faults_injected.values()) > 0  # the run did break streams
    assert time.monotonic() - started < 20
