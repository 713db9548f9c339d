"""The README documents every config key exactly as the code declares it."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from intact import config

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> object:
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "tools/update_readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_reference_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _tool().render(readme) == readme, "README is stale: run `make docs`"  # type: ignore[attr-defined]


def test_every_key_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for cls in (config.ServerConfig, config.RetryConfig, config.StreamConfig,
                config.BreakerConfig, config.RecoveryConfig, config.TelemetryConfig,
                config.UpstreamConfig):  # fmt: skip
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue  # nested [upstreams.retry] etc. tables, documented with their section
            assert f"`{f.name}`" in readme, f"{cls.__name__}.{f.name} is undocumented"
