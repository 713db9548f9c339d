"""The Grafana dashboards: Grafana 11 JSON built from dashboards/build_dashboards.py, every
panel described and placed, and every metric and label they query exported by a real intact
daemon (or recorded by deploy/prometheus/intact-rules.yml)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "dashboards" / "build_dashboards.py"
RULES = REPO / "deploy" / "prometheus" / "intact-rules.yml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Added by Prometheus at scrape time: job and instance always; namespace and pod by Kubernetes
# scrapes (deploy/kubernetes/monitoring/podmonitor.yaml) or static_configs labels.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
SCOPE = ("job", "namespace", "pod", "instance")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name not followed by "(" (a function or aggregation) and not inside a number or duration.
_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)$")


# OTEL_SEMCONV_STABILITY_OPT_IN: the GenAI client metrics under both their names.
BOTH_GENAI_CONVENTIONS = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental/dup"}
OPTED_IN = {  # default name -> the name with gen_ai_latest_experimental
    "gen_ai_client_operation_duration_seconds_bucket": (
        "gen_ai_client_inference_duration_seconds_bucket"
    ),
    "gen_ai_client_operation_time_to_first_chunk_seconds_bucket": (
        "gen_ai_client_inference_time_to_first_chunk_seconds_bucket"
    ),
}
COUNTERS = {  # what replaces gen_ai_client_token_usage (by gen_ai_token_type) when opted in
    "input": "gen_ai_client_inference_usage_input_tokens_total",
    "output": "gen_ai_client_inference_usage_output_tokens_total",
}
# Metrics of app requests, which carry the api and app labels.
STREAM_METRIC_PREFIXES = (
    "intact_streams_",
    "intact_attempts_",
    "intact_interruptions_",
    "intact_recovered_tokens_",
    "intact_active_streams",
    "intact_stream_duration_",
    "intact_recovery_duration_",
    "gen_ai_",
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names used in each selector's matchers, by metric name."""
    found: dict[str, set[str]] = {}
    for metric, body in _SELECTOR.findall(_STRING.sub('""', expr)):
        found.setdefault(metric, set()).update(_MATCHER_LABEL.findall(body))
    return found


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE))


def non_row_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        'sum by (le, upstream) (rate(intact_streams_total{outcome=~"a|b"}[5m])) '
        "/ on (job) group_left () job:intact_streams_failed:ratio_rate5m > bool 0.5e3 "
        'or label_replace(up, "x", "y", "z", "")'
    )
    assert metric_names(expr) == {
        "intact_streams_total",
        "job:intact_streams_failed:ratio_rate5m",
        "up",
    }
    assert matcher_labels('a{x="}", y=~"$y"} + b') == {"a": {"x", "y"}}


def test_committed_dashboards_are_the_builders_output() -> None:
    done = subprocess.run(
        [sys.executable, str(BUILDER), "--check"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_dashboards_are_grafana_11_with_the_datasource_as_a_variable(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    assert set(dashboards) == {
        "intact-overview.json",
        "intact-upstreams.json",
        "intact-fleet.json",
    }
    for name, board in dashboards.items():
        assert board["schemaVersion"] >= 39, name
        assert board["uid"] and board["title"].startswith("Intact / "), name
        assert board["refresh"] in ("30s", "1m"), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == DATASOURCE, (name, var["name"])
                assert var["definition"].startswith("label_values("), (name, var["name"])
    overview = {v["name"]: v for v in dashboards["intact-overview.json"]["templating"]["list"]}
    for name in ("upstream", "model"):
        assert overview[name]["multi"] and overview[name]["allValue"] == ".*"


def test_every_dashboard_selects_sidecars_by_job_namespace_pod_and_instance(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, board in dashboards.items():
        variables = [v for v in board["templating"]["list"] if v["name"] in SCOPE]
        assert [v["name"] for v in variables] == list(SCOPE), name
        for i, var in enumerate(variables):
            # "All" must also match a target without the label (a systemd host has no pod)
            assert var["multi"] and var["includeAll"] and var["allValue"] == ".*", var["name"]
            match = _LABEL_VALUES.match(var["definition"])
            assert match and match.group(2) == var["name"], var["definition"]
            # each one lists the values under the ones before it
            narrowed_by = set(matcher_labels(match.group(1)).get("intact_breaker_state", ()))
            assert narrowed_by == set(SCOPE[:i]), (name, var["name"], narrowed_by)


def test_every_panel_query_honours_the_scope_variables(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    """Raw metrics are filtered by all four scope variables, except on panels that compare a
    pod with the rest of the fleet (which say so); recorded series by those they carry."""
    for name, board in dashboards.items():
        for panel in non_row_panels(board):
            whole_fleet = "Ignores the pod and instance variables" in panel["description"]
            for target in panel["targets"]:
                for metric, labels in matcher_labels(target["expr"]).items():
                    where = f"{name}: {panel['title']!r}: {metric}"
                    if ":" in metric:  # a recording rule's series
                        assert "job" in labels, where
                    elif whole_fleet:
                        assert {"job", "namespace"} <= labels, where
                        assert not {"pod", "instance"} & labels, where
                    else:
                        assert set(SCOPE) <= labels, where


def test_every_panel_has_a_title_description_datasource_unit_and_its_own_place(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, board in dashboards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        taken: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert panel["title"], (name, panel["id"])
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & taken, f"{name}: {panel['title']!r} overlaps another panel"
            taken |= cells
        for panel in non_row_panels(board):
            where = f"{name}: {panel['title']!r}"
            assert panel["description"].strip(), where
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                assert target["expr"].strip(), where
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults["unit"], where
            assert defaults["thresholds"]["steps"][0]["value"] is None, where


def test_breaker_state_is_shown_as_closed_half_open_open(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, board in dashboards.items():
        timelines = [p for p in board["panels"] if p["type"] == "state-timeline"]
        assert timelines or name == "intact-fleet.json", name
        for panel in timelines:
            assert "intact_breaker_state" in panel["targets"][0]["expr"]
            (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
            texts = {value: m["text"] for value, m in mapping["options"].items()}
            assert texts == {"0": "closed", "1": "half-open", "2": "open"}


def test_interruption_rate_marks_the_3_2_percent_baseline(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, board in dashboards.items():
        panels = [
            p
            for p in non_row_panels(board)
            if p["type"] == "timeseries" and p["title"].startswith("Interruption rate")
        ]
        assert panels, name
        for panel in panels:
            defaults = panel["fieldConfig"]["defaults"]
            steps = [s["value"] for s in defaults["thresholds"]["steps"]]
            assert 0.032 in steps and 0.10 in steps, (name, steps)
            assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
            assert defaults["unit"] == "percentunit"


def test_the_overview_has_the_four_rows(dashboards: dict[str, dict[str, Any]]) -> None:
    rows = [p["title"] for p in dashboards["intact-overview.json"]["panels"] if p["type"] == "row"]
    assert {"Interruptions", "Recovery", "Upstream health", "Latency"} <= set(rows)


def _exported(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a /metrics exposition."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def _variable_queries(dashboards: dict[str, dict[str, Any]]) -> Iterable[tuple[str, str, str]]:
    for name, board in dashboards.items():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                match = _LABEL_VALUES.match(var["definition"])
                assert match, var["definition"]
                yield f"{name} ${var['name']}", match.group(1), match.group(2)


async def test_every_metric_and_label_the_dashboards_query_is_exported(
    serve_intact: Callable[..., Any],
    dashboards: dict[str, dict[str, Any]],
    panel_queries: list[Any],
    tmp_path: Path,
) -> None:
    # Both the GenAI metrics' default names and the opted-in ones: panels read either.
    async with serve_intact(tmp_path, environ=BOTH_GENAI_CONVENTIONS) as intact:
        await intact.mixed_traffic()
        exported = _exported(await intact.metrics_text())
    known = set(exported) | recorded_names()

    unknown = [
        f"{q.dashboard} {q.where}: {name}"
        for q in panel_queries
        for name in sorted(metric_names(q.expr) - known)
    ]
    wrong_labels = [
        f"{q.dashboard} {q.where}: {metric}{{{', '.join(sorted(labels - exported[metric]))}}}"
        for q in panel_queries
        for metric, labels in matcher_labels(q.expr).items()
        if metric in exported and labels - exported[metric] - TARGET_LABELS
    ]
    for where, selector, label in _variable_queries(dashboards):
        for metric in metric_names(selector):
            if metric not in exported:
                unknown.append(f"{where}: {metric}")
            elif label not in exported[metric] | TARGET_LABELS:
                wrong_labels.append(f"{where}: {metric} has no label {label}")
    assert not unknown, "metrics not exported by intact:\n" + "\n".join(unknown)
    assert not wrong_labels, "labels not on those metrics:\n" + "\n".join(wrong_labels)
    # the checks above saw every family the dashboards are about
    queried = {name for q in panel_queries for name in metric_names(q.expr)}
    assert {
        "intact_streams_total",
        "intact_interruptions_total",
        "intact_attempts_total",
        "intact_recovered_tokens_total",
        "intact_breaker_state",
        "intact_breaker_transitions_total",
        "intact_retry_budget_exhausted_total",
        "intact_active_streams",
        "intact_stream_duration_seconds_bucket",
        "intact_recovery_duration_seconds_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        *OPTED_IN.values(),
        *COUNTERS.values(),
    } <= queried


def test_dashboards_select_and_split_by_api_and_app(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    overview = {v["name"]: v for v in dashboards["intact-overview.json"]["templating"]["list"]}
    upstream = {v["name"]: v for v in dashboards["intact-upstreams.json"]["templating"]["list"]}
    for variables, names in ((overview, ("api", "app")), (upstream, ("api",))):
        for name in names:
            var = variables[name]
            assert var["multi"] and var["includeAll"] and var["allValue"] == ".*", name
            match = _LABEL_VALUES.match(var["definition"])
            assert match and match.group(2) == name
            assert metric_names(match.group(1)) == {"intact_streams_total"}
    panels = {p["title"]: p for p in non_row_panels(dashboards["intact-overview.json"])}
    (by_api,) = panels["Interruption rate by API"]["targets"]
    assert by_api["expr"].count("sum by (api)") == 2 and by_api["legendFormat"] == "{{api}}"
    (by_app,) = panels["Interruption rate by app"]["targets"]
    assert by_app["expr"].count("sum by (app)") == 2 and by_app["legendFormat"] == "{{app}}"
    (outcomes,) = panels["Streams by API and outcome"]["targets"]
    assert "sum by (api, outcome)" in outcomes["expr"]


def test_stream_metric_queries_follow_the_api_and_app_variables(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    """On the overview every stream metric is narrowed by $api and $app, on the upstream
    drilldown by $api; breaker, budget and hedge metrics have neither label."""
    follows = {"intact-overview.json": {"api", "app"}, "intact-upstreams.json": {"api"}}
    for name, wanted in follows.items():
        for panel in non_row_panels(dashboards[name]):
            for target in panel["targets"]:
                for metric, labels in matcher_labels(target["expr"]).items():
                    where = f"{name}: {panel['title']!r}: {metric}"
                    if metric.startswith(STREAM_METRIC_PREFIXES):
                        assert wanted <= labels, where
                    else:
                        assert not {"api", "app"} & labels, where


def test_genai_panels_read_the_opted_in_names_too(panel_queries: list[Any]) -> None:
    """A panel reading a GenAI client metric under its default name reads it, after ``or``,
    under the name OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental gives it."""
    seen = 0
    for q in panel_queries:
        names = metric_names(q.expr)
        for old, new in OPTED_IN.items():
            if old in names:
                seen += 1
                assert new in names and " or " in q.expr, f"{q.dashboard} {q.where}"
        if "gen_ai_client_token_usage_sum" in names:
            assert set(COUNTERS.values()) <= names, f"{q.dashboard} {q.where}"
    assert seen >= 4
