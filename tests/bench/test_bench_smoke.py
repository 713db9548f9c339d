"""`make bench` in miniature: every path starts, carries streams and is measured.

The benchmark itself stays out of the suite; this runs it for a few seconds with 10 streams
through direct, intact and the byte pipe (LiteLLM is left out: installing it takes minutes).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench.py"


def _timing():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("intact_bench_timing", ROOT / "bench/timing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lateness_is_measured_against_the_stream_schedule() -> None:
    # Role chunk and first token at step 0, then one token per 20 ms; chunk 4 is 5 ms late.
    arrivals = [1.000, 1.000, 1.020, 1.040, 1.065, 1.080, 1.100]
    late = _timing().lateness(arrivals, 50.0, (0.0, 2.0))
    assert [round(x * 1000, 3) for x in late] == [0.0, 0.0, 5.0, 0.0, 0.0]


@pytest.mark.timeout(180)
def test_quick_bench_measures_every_path(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = "--quick --workloads 10x50-faults --fault-rate 0.1 --rounds 1 --duration 1.5"
    args += " --paths direct,intact,pipe"
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args.split(), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "### Targets (issue 13)" in proc.stdout
    numbers = json.loads(out.read_text())["10x50@10%"]
    assert set(numbers) == {"direct", "intact", "byte pipe"}
    for path, m in numbers.items():
        assert m["chunks_per_s"] > 100, (path, m)
    for relay in ("intact", "byte pipe"):
        assert numbers[relay]["cpu_us_per_chunk"] > 0
        assert numbers[relay]["rss_peak_kib"] > 0
