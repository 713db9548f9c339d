"""The Prometheus rules: promtool accepts them and the example config, their unit tests pass,
and every alert follows the monitoring-mixin style, has a runbook section and is unit-tested
both firing and not firing."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "intact-rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
RUNBOOK = REPO / "deploy" / "runbook.md"
SEVERITIES = {"critical", "warning", "info"}


@dataclass(frozen=True)
class Alert:
    name: str
    text: str  # the rule's YAML block

    def field(self, key: str) -> str | None:
        found = re.search(rf"^\s*{key}:\s*(.+)$", self.text, re.MULTILINE)
        return found.group(1).strip() if found else None


def alerts() -> list[Alert]:
    """Alert rules of intact-rules.yml, split on their `- alert:` lines."""
    text = RULES.read_text()
    starts = [m.start() for m in re.finditer(r"^\s*- (?:alert|record):", text, re.MULTILINE)]
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    found = []
    for block in blocks:
        name = re.match(r"\s*- alert:\s*(\S+)", block)
        if name:
            found.append(Alert(name.group(1), block))
    return found


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_promtool_accepts_the_rules(promtool: str) -> None:
    done = promtool_run(promtool, "check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    done = promtool_run(promtool, "test", "rules", RULES_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_accepts_the_example_prometheus_config_and_its_rule_files(
    promtool: str,
) -> None:
    done = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout
    assert "intact-rules.yml" in done.stdout


def test_alerts_follow_the_mixin_style() -> None:
    found = alerts()
    assert {a.name for a in found} >= {
        "IntactDown",
        "IntactTargetMissing",
        "IntactCircuitBreakerOpen",
        "IntactAllUpstreamsUnavailable",
        "IntactBreakerFlapping",
        "IntactStreamsFailing",
        "IntactInterruptionRateHigh",
        "IntactRetryBudgetExhausted",
    }
    for alert in found:
        assert re.fullmatch(r"Intact(?:[A-Z][a-z0-9]*)+", alert.name), alert.name
        assert alert.field("severity") in SEVERITIES, alert.name
        assert alert.field("summary"), alert.name
        assert alert.field("description"), alert.name
        anchor = alert.name.lower()
        assert alert.field("runbook_url") == f"deploy/runbook.md#{anchor}", alert.name


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(), re.MULTILINE))
    missing = {a.name for a in alerts()} - headings
    assert not missing, f"deploy/runbook.md lacks sections for {sorted(missing)}"


def unit_test_cases() -> tuple[set[str], set[tuple[str, str]]]:
    """From rules_test.yml: alerts with an `exp_alerts: []` case, and the (alert, severity)
    pairs some case expects to fire."""
    quiet: set[str] = set()
    firing: set[tuple[str, str]] = set()
    current = None
    for line in RULES_TEST.read_text().splitlines():
        if re.match(r"\s*- eval_time:", line):
            current = None
        elif name := re.match(r"\s*alertname:\s*(\S+)", line):
            current = name.group(1)
        elif re.match(r"\s*exp_alerts:\s*\[\]", line) and current:
            quiet.add(current)
        elif (severity := re.match(r"\s*severity:\s*(\S+)", line)) and current:
            firing.add((current, severity.group(1)))
    return quiet, firing


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    quiet, firing = unit_test_cases()
    rules = {(a.name, a.field("severity")) for a in alerts()}
    assert rules - firing == set(), "never tested firing"
    assert {name for name, _ in rules} - quiet == set(), "never tested quiet"
