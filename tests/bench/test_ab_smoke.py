"""`bench/ab.py` in miniature: two intact variants (one with its own environment) and the
byte pipe, alternating and all at once, each measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AB = ROOT / "bench" / "ab.py"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", [[], ["--parallel"]])
def test_ab_measures_every_variant(mode: list[str]) -> None:
    daemon = str(ROOT / "daemon")
    args = ["--workload", "6x20", "--rounds", "1", "--seconds", "1", "--warmup", "0.5", *mode]
    variants = [f"a={daemon}", f"b={daemon}:INTACT_SERVER__APP_WRITE_TIMEOUT=30"]
    proc = subprocess.run(
        [sys.executable, str(AB), *args, *variants],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("summary", 1)[1]
    for name in ("a ", "b ", "byte pipe"):
        line = next(x for x in summary.splitlines() if x.startswith(name))
        assert "us/chunk" not in line and "peak RSS" in line, line
    assert "x pipe" in summary
