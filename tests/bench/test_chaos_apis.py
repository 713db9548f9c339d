"""`make chaos ARGS="--api messages|responses"` in miniature: a few seconds of faulted streams
through each of the other two APIs, every answer byte-exact or an explicit error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "intact_bench_chaos_apis", ROOT / "bench/chaos.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_api_flags(chaos: ModuleType) -> None:
    opts = chaos.parse_args(
        ["--api", "responses", "--background-fraction", "0.3", "--show-recovered", "2"]
    )
    assert (opts.api, opts.background_fraction, opts.show_recovered) == ("responses", 0.3, 2)
    assert chaos.parse_args(["--api", "all"]).apis() == ("chat", "messages", "responses")
    assert chaos.parse_args([]).api == "chat"
    upstream = opts.daemon("http://127.0.0.1:1/v1", "/tmp/x.sock").upstreams[0]
    assert set(upstream.apis) == {"chat", "messages", "responses"}
    with pytest.raises(SystemExit):
        chaos.parse_args(["--api", "completions"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("api", "mode"), [("messages", "instruct"), ("responses", "instruct"), ("responses", "prefill")]
)
async def test_faulted_streams_end_exact_or_with_an_explicit_error(
    chaos: ModuleType, api: str, mode: str
) -> None:
    opts = chaos.ChaosOptions(
        api=api,
        resume_mode=mode,
        streams=40,
        concurrency=20,
        tok_per_s=0.0,
        ttft=0.0,
        tools_fraction=0.1,
        background_fraction=0.5 if api == "responses" else 0.0,
        show_recovered=1,
    )
    report = await chaos.run_chaos(opts)
    details = chaos.report_text(report)
    s = report.stats
    assert s.done == 40, details
    assert sum(report.simulator.faults_injected.values()) > 0, details
    assert report.upstream_attempts > 40, details
    assert s.silent == 0 and s.garbled == 0, details
    assert s.exact + s.explicit_errors == 40, details
    assert s.protocol_issues == 0, details
    for sample in report.samples:
        assert sample.conversation.api == api
        assert "recovered stream" in "\n".join(chaos.render_sample(sample))
