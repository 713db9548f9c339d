"""Builds the Grafana dashboards in this folder; the JSON files are its output, kept in git.

    .venv/bin/python dashboards/build_dashboards.py          # rewrite the JSON files
    .venv/bin/python dashboards/build_dashboards.py --check  # exit 1 if they are stale

Edit this file, not the JSON, and not in the Grafana UI: provisioning loads the files
read-only. Metric names are the contract in daemon/intact/telemetry/metrics.py; the tests in
tests/ops check every name and run every expression against a real Prometheus.
Standard library only, for Grafana 11 (schemaVersion 39).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
OVERVIEW_UID = "intact-overview"
UPSTREAMS_UID = "intact-upstreams"
FLEET_UID = "intact-fleet"

# The seed story's interruption rate at peak, and IntactInterruptionRateHigh's threshold.
BASELINE_INTERRUPTION_RATE = 0.032
ALERT_INTERRUPTION_RATE = 0.10
# 1 - the default stream-delivery objective of deploy/prometheus/intact-rules.yml.
SLO_ERROR_BUDGET = 0.005

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"
OUTCOME_COLORS = {
    "completed": GREEN,
    "recovered": BLUE,
    "failed": RED,
    "rejected": ORANGE,
    "cancelled": "text",
}


# --- queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "__auto"
    instant: bool = False


def selector(metric: str, **matchers: str) -> str:
    """``metric{a=~"$a", b="x"}``; each matcher value is an operator and a quoted value, as
    made by ``eq``, ``rx`` and ``not_rx``."""
    parts = [f"{key}{value}" for key, value in matchers.items()]
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def rate(metric: str, window: str = "$__rate_interval", **matchers: str) -> str:
    return f"rate({selector(metric, **matchers)}[{window}])"


def increase(metric: str, window: str, **matchers: str) -> str:
    return f"increase({selector(metric, **matchers)}[{window}])"


def sum_by(by: str, expr: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum ({expr})"


def transitions(**matchers: str) -> str:
    """Breaker transitions per rate interval (bars read better than a rate of rare events)."""
    return increase("intact_breaker_transitions_total", "$__rate_interval", **matchers)


def quantile(q: float, bucket: str | Sequence[str], by: str = "", **matchers: str) -> str:
    """``histogram_quantile`` of a histogram's buckets; of the first of several histograms
    that has data when ``bucket`` names several (``or``: a series of the first hides the same
    series of the next, as in the GenAI metrics' old and new names)."""
    labels = ", ".join(["le", *([by] if by else [])])
    buckets = [bucket] if isinstance(bucket, str) else list(bucket)
    rates = " or ".join(rate(b, **matchers) for b in buckets)
    return f"histogram_quantile({q}, sum by ({labels}) ({rates}))"


# GenAI client metrics under the names of semantic conventions v1.41.0 (intact's default) and,
# second, of semantic-conventions-genai v0.1.0 (OTEL_SEMCONV_STABILITY_OPT_IN=
# gen_ai_latest_experimental), so the panels work either way.
GENAI_TTFC = (
    "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
    "gen_ai_client_inference_time_to_first_chunk_seconds_bucket",
)
GENAI_DURATION = (
    "gen_ai_client_operation_duration_seconds_bucket",
    "gen_ai_client_inference_duration_seconds_bucket",
)
GENAI_TOKEN_USAGE = "gen_ai_client_token_usage_sum"  # by gen_ai_token_type
GENAI_USAGE_COUNTERS = {  # the new names: one counter per token type
    "input": "gen_ai_client_inference_usage_input_tokens_total",
    "output": "gen_ai_client_inference_usage_output_tokens_total",
}


def token_rate(by: str = "", **matchers: str) -> str:
    """Tokens per second by ``gen_ai_token_type`` (and ``by``): from the token usage histogram,
    or else from the usage counters that replace it (labelled with their token type)."""
    old = sum_by(", ".join(["gen_ai_token_type", *([by] if by else [])]),
                 rate(GENAI_TOKEN_USAGE, **matchers))  # fmt: skip
    new = [
        f'label_replace({sum_by(by, rate(counter, **matchers))}, "gen_ai_token_type", '
        f'"{token_type}", "", "")'
        for token_type, counter in GENAI_USAGE_COUNTERS.items()
    ]
    return " or ".join([old, *new])


def eq(value: str) -> str:
    return f'="{value}"'


def rx(value: str) -> str:
    return f'=~"{value}"'


def not_rx(value: str) -> str:
    return f'!~"{value}"'


DELIVERED = rx("completed|recovered|failed")

# Which intact instances a dashboard shows: one variable per target label, each listing the
# values under the ones before it. Kubernetes scrapes (deploy/kubernetes/monitoring/) add
# `namespace` and `pod`; where a label is absent (a systemd host), "All" (.*) still matches.
SCOPE_LABELS = ("job", "namespace", "pod", "instance")
# A pod's series: `instance` too, so instances without pod labels stay apart.
PER_POD = "namespace, pod, instance"
POD_LEGEND = "{{namespace}}/{{pod}} {{instance}}"


def scope(*labels: str) -> dict[str, str]:
    """Matchers of the scope variables (all of them unless ``labels`` names some)."""
    return {label: rx(f"${label}") for label in labels or SCOPE_LABELS}


# --- panels ---------------------------------------------------------------------------------


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


NO_THRESHOLDS = thresholds((GREEN, None))


def color_override(name: str, color: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }


DASHED = [
    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
    {"id": "custom.fillOpacity", "value": 0},
]


def dashed_override(name: str, color: str) -> dict[str, Any]:
    override = color_override(name, color)
    override["properties"] += DASHED
    return override


def dashed_lines(pattern: str) -> dict[str, Any]:
    """Series whose name matches ``pattern`` drawn as dashed lines (a reference level)."""
    return {"matcher": {"id": "byRegexp", "options": pattern}, "properties": list(DASHED)}


def upstream_link() -> list[dict[str, Any]]:
    """Data link from a per-upstream series to the upstream drilldown dashboard."""
    url = (
        f"/d/{UPSTREAMS_UID}/intact-upstream?${{__url_time_range}}&${{datasource:queryparam}}"
        + "".join(f"&${{{label}:queryparam}}" for label in (*SCOPE_LABELS, "api"))
        + "&var-upstream=${__field.labels.upstream}"
    )
    return [{"title": "Upstream ${__field.labels.upstream}", "url": url}]


def targets(queries: Sequence[Query]) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DS,
            "editorMode": "code",
            "expr": q.expr,
            "legendFormat": q.legend,
            "range": not q.instant,
            "instant": q.instant,
            "refId": chr(ord("A") + i),
        }
        for i, q in enumerate(queries)
    ]


@dataclass
class Panel:
    """One panel before layout: ``width`` x ``height`` grid units."""

    body: dict[str, Any]
    width: int
    height: int


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    steps: dict[str, Any] = NO_THRESHOLDS,
    threshold_lines: bool = False,
    max_value: float | None = None,
    overrides: Iterable[dict[str, Any]] = (),
    links: Sequence[dict[str, Any]] = (),
    bars: bool = False,
    axis_label: str = "",
) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "gradientMode": "none",
        "showPoints": "never",
        "spanNulls": False,
        "axisSoftMin": 0,
        "axisLabel": axis_label,
        "stacking": {"mode": "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if threshold_lines else "off"},
    }
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "thresholds": steps,
        "links": list(links),
    }
    if max_value is not None:
        defaults["max"] = max_value
    body = {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }
    return Panel(body, width, height)


def stat(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str,
    steps: dict[str, Any] = NO_THRESHOLDS,
    decimals: int | None = None,
    graph: bool = False,
    width: int = 4,
    height: int = 4,
) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": steps,
        "mappings": [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    body = {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets([query]),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if steps is not NO_THRESHOLDS else "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value",
            "wideLayout": True,
            "showPercentChange": False,
        },
    }
    return Panel(body, width, height)


def bargauge(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str,
    steps: dict[str, Any] = NO_THRESHOLDS,
    max_value: float | None = None,
    width: int = 8,
    height: int = 8,
) -> Panel:
    """Horizontal bars, one per series of an instant query (a ranking)."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "color": {"mode": "thresholds"},
        "thresholds": steps,
        "mappings": [],
    }
    if max_value is not None:
        defaults["max"] = max_value
    body = {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets([query]),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "basic",
            "valueMode": "color",
            "namePlacement": "top",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizHeight": 16,
            "maxVizHeight": 300,
        },
    }
    return Panel(body, width, height)


BREAKER_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": GREEN, "index": 0},
            "1": {"text": "half-open", "color": YELLOW, "index": 1},
            "2": {"text": "open", "color": RED, "index": 2},
        },
    }
]


def breaker_timeline(title: str, description: str, query: Query, *, height: int = 6) -> Panel:
    body = {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets([query]),
        "fieldConfig": {
            "defaults": {
                "unit": "none",
                "min": 0,
                "max": 2,
                "color": {"mode": "thresholds"},
                "mappings": BREAKER_MAPPINGS,
                "thresholds": thresholds((GREEN, None), (YELLOW, 1), (RED, 2)),
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "mergeValues": True,
            "showValue": "auto",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    }
    return Panel(body, 24, height)


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def layout(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Place rows and their panels left to right, wrapping at 24 columns; number them."""
    out: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        out.append(
            {
                "type": "row",
                "title": row.title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            body = {
                "id": next_id,
                "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                **panel.body,
            }
            out.append(body)
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


# --- dashboards -----------------------------------------------------------------------------


def api_variable(**matchers: str) -> dict[str, Any]:
    return label_variable(
        "api",
        "API",
        f"label_values({selector('intact_streams_total', **matchers)}, api)",
        description="App-facing API: chat (OpenAI Chat Completions), responses (OpenAI "
        "Responses), messages (Anthropic Messages)",
    )


def app_variable(**matchers: str) -> dict[str, Any]:
    return label_variable(
        "app",
        "App",
        f"label_values({selector('intact_streams_total', **matchers)}, app)",
        description="The app that sent the requests: an [[apps]] name of intact's config, or "
        "'other'",
    )


def datasource_variable() -> dict[str, Any]:
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def label_variable(
    name: str, label: str, definition: str, *, multi: bool = True, description: str = ""
) -> dict[str, Any]:
    variable: dict[str, Any] = {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": DS,
        "definition": definition,
        "query": {
            "qryType": 1,
            "query": definition,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "multi": multi,
        "includeAll": multi,
        "options": [],
    }
    if multi:
        variable["allValue"] = ".*"
        variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        variable["current"] = {}
    return variable


SCOPE_DESCRIPTIONS = {
    "job": "Prometheus job of the intact targets (the alert rules expect job intact)",
    "namespace": "Kubernetes namespace of the pods (none outside Kubernetes)",
    "pod": "Pod whose intact sidecar is shown (none outside Kubernetes)",
    "instance": "intact daemons (admin listener addresses)",
}


def scope_variables() -> list[dict[str, Any]]:
    """job, namespace, pod and instance, each narrowed by the ones before it."""
    variables = []
    for i, label in enumerate(SCOPE_LABELS):
        outer = selector("intact_breaker_state", **{o: rx(f"${o}") for o in SCOPE_LABELS[:i]})
        variables.append(
            label_variable(
                label,
                label.capitalize(),
                f"label_values({outer}, {label})",
                description=SCOPE_DESCRIPTIONS[label],
            )
        )
    return variables


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    rows: Sequence[Row],
    variables: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["intact"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "version": 1,
        "links": [
            {
                "title": "intact dashboards",
                "type": "dashboards",
                "tags": ["intact"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "templating": {"list": variables},
        "panels": layout(rows),
    }


def breaker_annotation(**matchers: str) -> dict[str, Any]:
    expr = (
        "sum by (upstream) ("
        f"changes({selector('intact_breaker_transitions_total', to=eq('open'), **matchers)}[1m])"
        ") > 0"
    )
    return {
        "name": "Breaker opened",
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "expr": expr,
        "step": "1m",
        "titleFormat": "Breaker opened",
        "textFormat": "upstream {{upstream}}",
        "tagKeys": "upstream",
        "useValueForTime": False,
    }


def overview() -> dict[str, Any]:
    where = scope()
    ups = rx("$upstream")
    model = rx("$model")
    who = {"api": rx("$api"), "app": rx("$app")}  # which API, which app (stream metrics)
    who_where = {**where, **who}
    streams = {**where, "upstream": ups, "model": model, **who}
    per_upstream = {**where, "upstream": ups}  # breakers, budgets, hedges: not per request
    per_stream = {**per_upstream, **who}
    genai = {**where, "upstream": ups, "gen_ai_request_model": model, **who}

    def attempts(result: str) -> str:
        return rate("intact_attempts_total", result=result, **per_stream)

    def stream_rate(outcomes: str, by: str = "") -> str:
        return sum_by(by, rate("intact_streams_total", outcome=outcomes, **streams))

    def stream_increase(outcomes: str) -> str:
        return sum_by("", increase("intact_streams_total", "$__range", outcome=outcomes, **streams))

    interruption_steps = thresholds(
        (GREEN, None), (YELLOW, BASELINE_INTERRUPTION_RATE), (RED, ALERT_INTERRUPTION_RATE)
    )

    summary = Row(
        "Overview",
        [
            stat(
                "Streams",
                "App requests per second that ended completed, recovered or failed (all "
                "outcomes but rejected and cancelled).",
                Query(stream_rate(DELIVERED)),
                unit="reqps",
                graph=True,
            ),
            stat(
                "Interruption rate",
                "Over the selected time range: (recovered + failed) / (completed + recovered "
                "+ failed). Yellow from the 3.2% baseline of the seed deployment, red from "
                "the 10% of IntactInterruptionRateHigh.",
                Query(
                    f"{stream_increase(rx('recovered|failed'))} / {stream_increase(DELIVERED)}",
                    instant=True,
                ),
                unit="percentunit",
                steps=interruption_steps,
                decimals=2,
            ),
            stat(
                "Saved by recovery",
                "Over the selected time range: of the interrupted streams, the share intact "
                "delivered whole anyway, recovered / (recovered + failed).",
                Query(
                    f"{stream_increase(eq('recovered'))} / "
                    f"{stream_increase(rx('recovered|failed'))}",
                    instant=True,
                ),
                unit="percentunit",
                steps=thresholds((RED, None), (YELLOW, 0.9), (GREEN, 0.99)),
                decimals=2,
            ),
            stat(
                "Delivered whole",
                "Over the selected time range: (completed + recovered) / (completed + "
                "recovered + failed), the stream-delivery SLI. Green at the 99.5% objective "
                "of the IntactStreamsFailing alerts.",
                Query(
                    f"{stream_increase(rx('completed|recovered'))} / {stream_increase(DELIVERED)}",
                    instant=True,
                ),
                unit="percentunit",
                steps=thresholds((RED, None), (GREEN, 1 - SLO_ERROR_BUDGET)),
                decimals=2,
            ),
            stat(
                "Open breakers",
                "Upstreams (per intact instance) whose circuit breaker is open right now. "
                "Requests skip them, or get 503 upstream_unavailable when none is left.",
                Query(
                    "count(max by (instance, upstream) "
                    f"({selector('intact_breaker_state', **per_upstream)}) == 2) or vector(0)",
                    instant=True,
                ),
                unit="none",
                steps=thresholds((GREEN, None), (RED, 1)),
            ),
            stat(
                "Active streams",
                "App requests being served right now, over the selected instances (not split "
                "by upstream or model).",
                Query(f"sum({selector('intact_active_streams', **who_where)})"),
                unit="none",
                graph=True,
            ),
        ],
    )

    interruptions = Row(
        "Interruptions",
        [
            timeseries(
                "Interruption rate by upstream",
                "(recovered + failed) / (completed + recovered + failed) per upstream: how "
                "often a stream broke, whether or not intact saved it. Dashed lines: the "
                "3.2% baseline of the seed deployment and the 10% of "
                "IntactInterruptionRateHigh.",
                [
                    Query(
                        f"{stream_rate(rx('recovered|failed'), 'upstream')} / "
                        f"{stream_rate(DELIVERED, 'upstream')}",
                        "{{upstream}}",
                    ),
                    Query(
                        f"{stream_rate(rx('recovered|failed'))} / {stream_rate(DELIVERED)}",
                        "all upstreams",
                    ),
                ],
                unit="percentunit",
                width=8,
                steps=interruption_steps,
                threshold_lines=True,
                links=upstream_link(),
            ),
            timeseries(
                "Interruptions by kind",
                "Failed upstream attempts per second by what went wrong (reset, stall, "
                "first_token_timeout, http_429, http_5xx, ...). Not stacked: kinds differ by "
                "orders of magnitude. Not split by model.",
                [
                    Query(
                        f"sum by (kind) ({rate('intact_interruptions_total', **per_stream)})",
                        "{{kind}}",
                    )
                ],
                unit="cps",
                width=8,
                axis_label="interruptions / s",
            ),
            timeseries(
                "Failed-stream ratio",
                "failed / (completed + recovered + failed): streams that ended in an explicit "
                "error. The dashed line is the error budget of the stream-delivery SLO, from "
                "the recording rule intact:stream_delivery_slo:objective (shown only where "
                "deploy/prometheus/intact-rules.yml is loaded).",
                [
                    Query(f"{stream_rate(eq('failed'))} / {stream_rate(DELIVERED)}", "failed"),
                    Query("1 - intact:stream_delivery_slo:objective", "SLO error budget"),
                ],
                unit="percentunit",
                width=8,
                steps=thresholds((GREEN, None), (RED, SLO_ERROR_BUDGET)),
                overrides=[dashed_override("SLO error budget", RED)],
            ),
            timeseries(
                "Recovered vs failed streams",
                "Interrupted streams per second: recovered (delivered whole after a resume "
                "or retry) and failed (the app got an explicit error).",
                [
                    Query(stream_rate(eq("recovered")), "recovered"),
                    Query(stream_rate(eq("failed")), "failed"),
                ],
                unit="reqps",
                overrides=[color_override("recovered", BLUE), color_override("failed", RED)],
            ),
            timeseries(
                "Streams by outcome",
                "App requests per second by how they ended: completed, recovered, failed, "
                "rejected (an upstream 4xx passed through) and cancelled (the app went away).",
                [Query(stream_rate(rx(".+"), "outcome"), "{{outcome}}")],
                unit="reqps",
                overrides=[color_override(o, c) for o, c in OUTCOME_COLORS.items()],
            ),
            timeseries(
                "Interruption rate by API",
                "(recovered + failed) / (completed + recovered + failed) per app-facing API: "
                "chat (Chat Completions), responses (OpenAI Responses), messages (Anthropic "
                "Messages). Each API streams its own event format, so each resumes its own "
                "way. Dashed lines: the 3.2% baseline and the 10% of "
                "IntactInterruptionRateHigh.",
                [
                    Query(
                        f"{stream_rate(rx('recovered|failed'), 'api')} / "
                        f"{stream_rate(DELIVERED, 'api')}",
                        "{{api}}",
                    )
                ],
                unit="percentunit",
                width=8,
                steps=interruption_steps,
                threshold_lines=True,
            ),
            timeseries(
                "Interruption rate by app",
                "(recovered + failed) / (completed + recovered + failed) per app ([[apps]] "
                "of intact's config; 'other' for peers of no app). Dashed lines: the 3.2% "
                "baseline and the 10% of IntactInterruptionRateHigh.",
                [
                    Query(
                        f"{stream_rate(rx('recovered|failed'), 'app')} / "
                        f"{stream_rate(DELIVERED, 'app')}",
                        "{{app}}",
                    )
                ],
                unit="percentunit",
                width=8,
                steps=interruption_steps,
                threshold_lines=True,
            ),
            timeseries(
                "Streams by API and outcome",
                "App requests per second by app-facing API and how they ended.",
                [Query(stream_rate(rx(".+"), "api, outcome"), "{{api}}: {{outcome}}")],
                unit="reqps",
                width=8,
            ),
        ],
    )

    recovery = Row(
        "Recovery",
        [
            timeseries(
                "Recovered tokens",
                "Tokens per second that reached apps through resume attempts: the text "
                "recovery saved from being lost. Not split by model.",
                [
                    Query(
                        sum_by("upstream", rate("intact_recovered_tokens_total", **per_stream)),
                        "{{upstream}}",
                    )
                ],
                unit="suffix: tok/s",
                links=upstream_link(),
            ),
            timeseries(
                "Recovery duration",
                "From an interruption to the first continuation text delivered to the app "
                "(backoff plus the resume's time to first token), p50 and p95.",
                [
                    Query(
                        quantile(0.5, "intact_recovery_duration_seconds_bucket", **per_stream),
                        "p50",
                    ),
                    Query(
                        quantile(0.95, "intact_recovery_duration_seconds_bucket", **per_stream),
                        "p95",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Attempts by reason and result",
                "Upstream attempts per second: initial, retry (before any text reached the "
                "app) or resume (after), by result (success, an interruption kind, "
                "cancelled).",
                [
                    Query(
                        sum_by("reason, result", rate("intact_attempts_total", **per_stream)),
                        "{{reason}}: {{result}}",
                    )
                ],
                unit="ops",
            ),
            timeseries(
                "Resume share",
                "Resumes as a share of all upstream attempts, and the share of resumes that "
                "succeeded. A falling success share points at a resume mode the upstream "
                "handles badly.",
                [
                    Query(
                        sum_by("", rate("intact_attempts_total", reason=eq("resume"), **per_stream))
                        + " / "
                        + sum_by("", rate("intact_attempts_total", **per_stream)),
                        "resumes / all attempts",
                    ),
                    Query(
                        "sum ("
                        + rate(
                            "intact_attempts_total",
                            reason=eq("resume"),
                            result=eq("success"),
                            **per_stream,
                        )
                        + ") / sum ("
                        + rate("intact_attempts_total", reason=eq("resume"), **per_stream)
                        + ")",
                        "resumes that succeeded",
                    ),
                ],
                unit="percentunit",
                max_value=1,
            ),
        ],
    )

    health = Row(
        "Upstream health",
        [
            breaker_timeline(
                "Circuit breaker state",
                "Breaker state per upstream: closed, half-open (probing) or open (requests "
                "skip it). With several instances selected, the worst state is shown.",
                Query(
                    f"max by (upstream) ({selector('intact_breaker_state', **per_upstream)})",
                    "{{upstream}}",
                ),
            ),
            timeseries(
                "Breaker transitions",
                "Circuit breaker transitions by upstream and target state, per rate interval. "
                "Repeated open/closed pairs mean a flapping upstream.",
                [
                    Query(
                        sum_by("upstream, to", transitions(**per_upstream)),
                        "{{upstream}} → {{to}}",
                    )
                ],
                unit="short",
                width=6,
                bars=True,
            ),
            timeseries(
                "Retry budget exhausted",
                "Retries and resumes per second refused because the upstream's retry budget "
                "was spent; the request failed over or ended with retry_budget_exhausted.",
                [
                    Query(
                        "sum by (upstream) ("
                        f"{rate('intact_retry_budget_exhausted_total', **per_upstream)})",
                        "{{upstream}}",
                    )
                ],
                unit="cps",
                width=6,
                steps=thresholds((GREEN, None), (RED, 0.000001)),
                axis_label="refused / s",
                links=upstream_link(),
            ),
            timeseries(
                "Attempt failure ratio",
                "Failed upstream attempts / all attempts per upstream (cancelled attempts "
                "left out): roughly what the circuit breaker judges (it ignores 429s).",
                [
                    Query(
                        sum_by("upstream", attempts(not_rx("success|cancelled")))
                        + " / "
                        + sum_by("upstream", attempts(not_rx("cancelled"))),
                        "{{upstream}}",
                    )
                ],
                unit="percentunit",
                width=6,
                max_value=1,
                steps=thresholds((GREEN, None), (YELLOW, 0.1), (RED, 0.5)),
                links=upstream_link(),
            ),
            timeseries(
                "Active streams",
                "App requests being served right now, per intact instance.",
                [
                    Query(
                        f"sum by (instance) ({selector('intact_active_streams', **who_where)})",
                        "{{instance}}",
                    )
                ],
                unit="short",
                width=6,
            ),
            timeseries(
                "Hedges",
                "Hedged attempts per second by the upstream hedged to (routing.hedge_after: "
                "the first upstream had no first event yet): won = the hedge answered first, "
                "lost = the first upstream did.",
                [
                    Query(
                        "sum by (upstream) ("
                        f"{rate('intact_hedges_total', result=eq('won'), **per_upstream)})",
                        "{{upstream}} won",
                    ),
                    Query(
                        "sum by (upstream) ("
                        f"{rate('intact_hedges_total', result=eq('lost'), **per_upstream)})",
                        "{{upstream}} lost",
                    ),
                ],
                unit="cps",
                width=12,
                axis_label="hedges / s",
                links=upstream_link(),
            ),
            timeseries(
                "Hedge win ratio",
                "Share of hedges that answered before the upstream they raced: high means the "
                "first upstream is often slow to its first token.",
                [
                    Query(
                        "sum by (upstream) ("
                        f"{rate('intact_hedges_total', result=eq('won'), **per_upstream)})"
                        " / sum by (upstream) ("
                        f"{rate('intact_hedges_total', **per_upstream)})",
                        "{{upstream}}",
                    )
                ],
                unit="percentunit",
                width=12,
                max_value=1,
                links=upstream_link(),
            ),
        ],
    )

    latency = Row(
        "Latency",
        [
            timeseries(
                "Time to first chunk",
                "GenAI client metric: from sending an upstream attempt to its first chunk, "
                "p50, p95 and p99 over all attempts (resumes included).",
                [
                    Query(quantile(q, GENAI_TTFC, **genai), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
                unit="s",
            ),
            timeseries(
                "Upstream attempt duration",
                "GenAI client metric gen_ai.client.operation.duration (or, with "
                "OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, "
                "gen_ai.client.inference.duration): one upstream attempt from request to its "
                "end or failure, p50, p95 and p99.",
                [
                    Query(quantile(q, GENAI_DURATION, **genai), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
                unit="s",
            ),
            timeseries(
                "Stream duration by outcome",
                "Whole app requests, every attempt and backoff included, p50 and p95 by "
                "outcome. Recovered streams take longer by the recovery time. Not split by "
                "model.",
                [
                    Query(
                        quantile(
                            q, "intact_stream_duration_seconds_bucket", "outcome", **per_stream
                        ),
                        f"p{round(q * 100)} {{{{outcome}}}}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            timeseries(
                "Token usage",
                "Input and output tokens per second as reported by the upstreams' usage "
                "(GenAI client metric gen_ai.client.token.usage, or the "
                "gen_ai.client.inference.usage.* counters that replace it when opted in).",
                [Query(token_rate(**genai), "{{gen_ai_token_type}}")],
                unit="suffix: tok/s",
            ),
        ],
    )

    return dashboard(
        uid=OVERVIEW_UID,
        title="Intact / Overview",
        description=(
            "intact relays streaming chat completions and recovers broken streams. "
            "Interruptions, recovery, upstream health and latency across upstreams."
        ),
        rows=[summary, interruptions, recovery, health, latency],
        variables=[
            datasource_variable(),
            *scope_variables(),
            label_variable(
                "upstream",
                "Upstream",
                f"label_values({selector('intact_breaker_state', **where)}, upstream)",
            ),
            label_variable(
                "model",
                "Model",
                f"label_values({selector('intact_streams_total', **per_upstream)}, model)",
                description="Request model (capped per upstream; later models show as 'other')",
            ),
            api_variable(**per_upstream),
            app_variable(**per_upstream),
        ],
        annotations=[breaker_annotation(**per_upstream)],
    )


def upstreams() -> dict[str, Any]:
    where = scope()
    one = {**where, "upstream": eq("$upstream")}
    one_api = {**one, "api": rx("$api")}  # the stream metrics of the selected APIs

    def stream_rate(outcomes: str, by: str = "") -> str:
        return sum_by(by, rate("intact_streams_total", outcome=outcomes, **one_api))

    streams = Row(
        "Streams",
        [
            timeseries(
                "Streams by outcome and model",
                "App requests per second served by this upstream, by outcome, model and "
                "app-facing API.",
                [
                    Query(
                        stream_rate(rx(".+"), "outcome, model, api"),
                        "{{outcome}} {{model}} ({{api}})",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Interruption rate",
                "(recovered + failed) / (completed + recovered + failed) for this upstream. "
                "Dashed lines: the 3.2% baseline and the 10% of IntactInterruptionRateHigh.",
                [
                    Query(
                        f"{stream_rate(rx('recovered|failed'))} / {stream_rate(DELIVERED)}",
                        "interruption rate",
                    )
                ],
                unit="percentunit",
                steps=thresholds(
                    (GREEN, None),
                    (YELLOW, BASELINE_INTERRUPTION_RATE),
                    (RED, ALERT_INTERRUPTION_RATE),
                ),
                threshold_lines=True,
            ),
        ],
    )
    attempts = Row(
        "Attempts",
        [
            timeseries(
                "Attempts by reason and result",
                "Attempts per second to this upstream: initial, retry or resume, by result.",
                [
                    Query(
                        f"sum by (reason, result) ({rate('intact_attempts_total', **one_api)})",
                        "{{reason}}: {{result}}",
                    )
                ],
                unit="ops",
            ),
            timeseries(
                "Interruptions by kind",
                "Failed attempts per second to this upstream by kind.",
                [
                    Query(
                        f"sum by (kind) ({rate('intact_interruptions_total', **one_api)})",
                        "{{kind}}",
                    )
                ],
                unit="cps",
                axis_label="interruptions / s",
            ),
        ],
    )
    breaker = Row(
        "Circuit breaker and retry budget",
        [
            breaker_timeline(
                "Circuit breaker state",
                "This upstream's breaker on each intact instance: closed, half-open or open.",
                Query(
                    f"max by (instance) ({selector('intact_breaker_state', **one)})",
                    "{{instance}}",
                ),
            ),
            timeseries(
                "Breaker transitions",
                "Transitions per rate interval by target state and instance.",
                [
                    Query(
                        sum_by("instance, to", transitions(**one)),
                        "{{instance}} → {{to}}",
                    )
                ],
                unit="short",
                bars=True,
            ),
            timeseries(
                "Retry budget exhausted",
                "Retries and resumes per second refused because this upstream's retry budget "
                "was spent, per instance.",
                [
                    Query(
                        f"sum by (instance) ({rate('intact_retry_budget_exhausted_total', **one)})",
                        "{{instance}}",
                    )
                ],
                unit="cps",
                steps=thresholds((GREEN, None), (RED, 0.000001)),
                axis_label="refused / s",
            ),
        ],
    )
    latency = Row(
        "Latency and tokens",
        [
            timeseries(
                "Time to first chunk by model",
                "p50 and p95 from sending an attempt to its first chunk, per model.",
                [
                    Query(
                        quantile(q, GENAI_TTFC, "gen_ai_request_model", **one_api),
                        f"p{round(q * 100)} {{{{gen_ai_request_model}}}}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            timeseries(
                "Attempt duration by error type",
                "p95 duration of attempts by how they ended (error.type; 'success' when "
                "none): fast failures are refusals, slow ones timeouts.",
                [
                    Query(
                        "label_replace("
                        + quantile(0.95, GENAI_DURATION, "error_type", **one_api)
                        + ', "error_type", "success", "error_type", "")',
                        "{{error_type}}",
                    )
                ],
                unit="s",
            ),
            timeseries(
                "Recovery duration",
                "Interruption to first continuation text delivered, p50 and p95.",
                [
                    Query(
                        quantile(q, "intact_recovery_duration_seconds_bucket", **one_api),
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            timeseries(
                "Tokens by type and model",
                "Input and output tokens per second reported by this upstream, and the "
                "tokens per second recovery delivered through resumes.",
                [
                    Query(
                        token_rate("gen_ai_request_model", **one_api),
                        "{{gen_ai_token_type}} {{gen_ai_request_model}}",
                    ),
                    Query(
                        f"sum ({rate('intact_recovered_tokens_total', **one_api)})",
                        "recovered (output)",
                    ),
                ],
                unit="suffix: tok/s",
            ),
        ],
    )
    return dashboard(
        uid=UPSTREAMS_UID,
        title="Intact / Upstream",
        description="One intact upstream in detail: streams, attempts, breaker, budget, latency.",
        rows=[streams, attempts, breaker, latency],
        variables=[
            datasource_variable(),
            *scope_variables(),
            label_variable(
                "upstream",
                "Upstream",
                f"label_values({selector('intact_breaker_state', **where)}, upstream)",
                multi=False,
            ),
            api_variable(**one),
        ],
        annotations=[breaker_annotation(**one)],
    )


def fleet() -> dict[str, Any]:
    where = scope()
    ups = rx("$upstream")
    pods = {**where, "upstream": ups}
    # "Everyone or a few pods" compares each pod with the rest of the namespace selection,
    # so it ignores the pod and instance variables.
    fleet_scope = {**scope("job", "namespace"), "upstream": ups}

    def streams(outcome: str) -> str:
        """Streams per second per pod."""
        return sum_by(PER_POD, rate("intact_streams_total", outcome=outcome, **pods))

    def streams_in_range(outcome: str) -> str:
        """Streams per pod over the dashboard's time range."""
        return sum_by(
            PER_POD, increase("intact_streams_total", "$__range", outcome=outcome, **pods)
        )

    open_bool = "job_instance_upstream:intact_breaker_open:bool"
    pods_open = sum_by("upstream", selector(open_bool, **fleet_scope))
    pods_using = f"count by (upstream) ({selector(open_bool, **fleet_scope)})"

    def pods_with_attempts(result: str) -> str:
        per_pod_upstream = sum_by(
            f"{PER_POD}, upstream",
            rate("intact_attempts_total", result=result, **fleet_scope),
        )
        return f"count by (upstream) ({per_pod_upstream} > 0)"

    interruption_steps = thresholds(
        (GREEN, None), (YELLOW, BASELINE_INTERRUPTION_RATE), (RED, ALERT_INTERRUPTION_RATE)
    )

    summary = Row(
        "Fleet",
        [
            stat(
                "Sidecars reporting",
                "intact instances (one per pod for sidecars) whose metrics Prometheus has "
                "right now, in the selection.",
                Query(
                    "count(count by (job, namespace, pod, instance) "
                    f"({selector('intact_breaker_state', **where)}))",
                    instant=True,
                ),
                unit="none",
                width=5,
            ),
            stat(
                "Pods with failed streams",
                "Pods whose intact ended at least one stream with an explicit error over the "
                "selected time range.",
                Query(f"count({streams_in_range(eq('failed'))} > 0) or vector(0)", instant=True),
                unit="none",
                steps=thresholds((GREEN, None), (RED, 1)),
                width=5,
            ),
            stat(
                "Pods with an open breaker",
                "Pods on which at least one upstream's circuit breaker is open right now.",
                Query(
                    f"count(max by ({PER_POD}) "
                    f"({selector('intact_breaker_state', **pods)}) == 2) or vector(0)",
                    instant=True,
                ),
                unit="none",
                steps=thresholds((GREEN, None), (RED, 1)),
                width=5,
            ),
            stat(
                "Upstreams failing fleet-wide",
                "Upstreams whose breaker is open on at least half of the pods that use them "
                "(IntactUpstreamFailingFleetWide; needs deploy/prometheus/intact-rules.yml).",
                Query(
                    "count("
                    + selector("job_upstream:intact_breaker_open_fleet_wide:bool", **scope("job"))
                    + " == 1) or vector(0)",
                    instant=True,
                ),
                unit="none",
                steps=thresholds((GREEN, None), (RED, 1)),
                width=5,
            ),
            stat(
                "Failed streams",
                "Streams that ended with an explicit error over the selected time range, all "
                "selected pods together.",
                Query(f"sum({streams_in_range(eq('failed'))})", instant=True),
                unit="none",
                decimals=0,
                width=4,
            ),
        ],
    )

    breaking = Row(
        "Which pods are breaking streams",
        [
            bargauge(
                "Pods with the most failed streams",
                "The 10 pods that ended the most streams with an explicit error over the "
                "selected time range (pods without any are left out).",
                Query(
                    f"sort_desc(topk(10, {streams_in_range(eq('failed'))} > 0))",
                    POD_LEGEND,
                    instant=True,
                ),
                unit="none",
                steps=thresholds((RED, None)),
            ),
            timeseries(
                "Failed-stream ratio by pod (top 10)",
                "failed / (completed + recovered + failed) per pod, the 10 worst at each "
                "moment. A pod far above the others breaks streams for its own reasons (its "
                "node, its network path, its app). The dashed line is the SLO's error budget.",
                [
                    Query(
                        f"topk(10, {streams(eq('failed'))} / {streams(DELIVERED)})",
                        POD_LEGEND,
                    )
                ],
                unit="percentunit",
                width=8,
                steps=thresholds((GREEN, None), (RED, SLO_ERROR_BUDGET)),
                threshold_lines=True,
            ),
            timeseries(
                "Interruption rate by pod (top 10)",
                "(recovered + failed) / (completed + recovered + failed) per pod, the 10 "
                "highest at each moment. Dashed lines: the 3.2% baseline and the 10% of "
                "IntactInterruptionRateHigh.",
                [
                    Query(
                        f"topk(10, {streams(rx('recovered|failed'))} / {streams(DELIVERED)})",
                        POD_LEGEND,
                    )
                ],
                unit="percentunit",
                width=8,
                steps=interruption_steps,
                threshold_lines=True,
            ),
            timeseries(
                "Breaker openings by pod",
                "Circuit breakers that opened, per pod and upstream, per rate interval (the 10 "
                "busiest). IntactCircuitBreakerOpen fires per pod while an upstream fails for "
                "fewer than half of the pods.",
                [
                    Query(
                        "topk(10, "
                        + sum_by(
                            f"{PER_POD}, upstream",
                            transitions(to=eq("open"), **pods),
                        )
                        + " > 0)",
                        POD_LEGEND + " {{upstream}}",
                    )
                ],
                unit="short",
                width=24,
                height=7,
                bars=True,
            ),
        ],
    )

    upstream_rows = Row(
        "Which upstream is failing: everyone or a few pods",
        [
            bargauge(
                "Share of pods with the breaker open, now",
                "Per upstream: pods whose breaker for it is open / pods that use it. Near 1: "
                "it fails for everyone (IntactUpstreamFailingFleetWide from 0.5); one pod out "
                "of many: that pod's problem (IntactCircuitBreakerOpen). Ignores the pod and "
                "instance variables. Needs deploy/prometheus/intact-rules.yml.",
                Query(f"sort_desc({pods_open} / {pods_using})", "{{upstream}}", instant=True),
                unit="percentunit",
                max_value=1,
                steps=thresholds((GREEN, None), (YELLOW, 0.000001), (RED, 0.5)),
            ),
            timeseries(
                "Pods with the breaker open, per upstream",
                "Per upstream: pods whose breaker for it is open, against the pods that use it "
                "(dashed). Ignores the pod and instance variables. Needs "
                "deploy/prometheus/intact-rules.yml.",
                [
                    Query(pods_open, "{{upstream}}: open"),
                    Query(pods_using, "{{upstream}}: pods using it"),
                ],
                unit="none",
                width=8,
                overrides=[dashed_lines(".*: pods using it")],
            ),
            timeseries(
                "Pods with failed attempts, per upstream",
                "Per upstream: pods that saw at least one failed attempt to it in the rate "
                "interval, against the pods that sent it attempts (dashed). Earlier and noisier "
                "than the breaker: at the 3.2% baseline busy pods all see some. Ignores the pod "
                "and instance variables.",
                [
                    Query(pods_with_attempts(not_rx("success|cancelled")), "{{upstream}}: failing"),
                    Query(pods_with_attempts(not_rx("cancelled")), "{{upstream}}: sending"),
                ],
                unit="none",
                width=8,
                overrides=[dashed_lines(".*: sending")],
            ),
        ],
    )

    return dashboard(
        uid=FLEET_UID,
        title="Intact / Fleet",
        description=(
            "Many intact sidecars at once: which pods break streams, and whether an upstream "
            "fails for every pod or for a few."
        ),
        rows=[summary, breaking, upstream_rows],
        variables=[
            datasource_variable(),
            *scope_variables(),
            label_variable(
                "upstream",
                "Upstream",
                f"label_values({selector('intact_breaker_state', **where)}, upstream)",
            ),
        ],
        annotations=[breaker_annotation(**pods)],
    )


DASHBOARDS = {
    "intact-overview.json": overview,
    "intact-upstreams.json": upstreams,
    "intact-fleet.json": fleet,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run dashboards/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
