"""bench/chaos.py measures per text style against the simulator's own expected answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("intact_bench_chaos_sim", ROOT / "bench/chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_flags_pick_the_text_style_resume_mode_and_quirks(chaos: ModuleType) -> None:
    opts = chaos.parse_args(
        ["--text-style", "cjk", "--resume-mode", "instruct", "--reasoning",
         "--paraphrase-prob", "0.5", "--first-fault-rate", "0.2",
         "--continuation-fault-rate", "0.1"]
    )  # fmt: skip
    assert (opts.text_style, opts.resume_mode, opts.reasoning) == ("cjk", "instruct", True)
    assert opts.models() == ("sim-1:cjk:reasoning", "sim-2:cjk:reasoning")
    assert opts.simulator().paraphrase_prob == 0.5
    assert (opts.simulator().fault_rate, opts.simulator().continuation_fault_rate) == (0.2, 0.1)
    assert opts.daemon("http://127.0.0.1:1/v1", "/tmp/x.sock").upstreams[0].resume == "instruct"
    defaults = chaos.parse_args([])
    assert (defaults.text_style, defaults.resume_mode) == ("mixed", "prefill")
    with pytest.raises(SystemExit):
        chaos.parse_args(["--text-style", "poetry"])


@pytest.mark.timeout(30)
async def test_clean_run_is_byte_exact_in_every_style(chaos: ModuleType) -> None:
    opts = chaos.ChaosOptions(
        streams=40,
        concurrency=10,
        tok_per_s=0.0,
        ttft=0.0,
        first_fault_rate=0.0,
        continuation_fault_rate=0.0,
        tools_fraction=0.2,
    )
    report = await chaos.run_chaos(opts)
    details = chaos.report_text(report)
    assert report.stats.done == 40 and report.stats.exact == 40, details
    assert set(report.by_style) == {"prose", "code", "table", "cjk", "json", "tools"}, details
    assert sum(t.stats.done for t in report.by_style.values()) == 40
    assert "results per style" in details and "RESULT: PASS" in details
    for label in report.by_style:
        assert f"\n  {label} " in details
