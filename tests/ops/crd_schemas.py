"""Minimal JSON schemas of the two Prometheus Operator resources intact ships (PodMonitor and
PrometheusRule, monitoring.coreos.com/v1).

The Kubernetes OpenAPI schemas that kubernetes-validate carries cover the core API only, and
the operator's CRDs are not packaged for offline use. These schemas are written by hand from
the operator's API reference and hold what the manifests use: the required fields, their
types, and the names of the neighbouring fields, with unknown fields refused at every level
described, so a typo fails as it would against the real CRD. Fields of the CRDs that are not
listed here are refused too: add them here when a manifest starts using them.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "monitoring.coreos.com/v1"

# A Prometheus duration: 30s, 1m30s, 2h, 0.
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
STRINGS = {"type": "array", "items": {"type": "string"}}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def strict(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


LABEL_SELECTOR = strict(
    {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": strict(
                {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": STRINGS,
                },
                "key",
                "operator",
            ),
        },
    }
)

RELABEL_ACTIONS = [
    "replace",
    "keep",
    "drop",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
    "keepequal",
    "dropequal",
]
RELABEL_CONFIG = strict(
    {
        "sourceLabels": STRINGS,
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        "action": {"enum": RELABEL_ACTIONS + [a.capitalize() for a in RELABEL_ACTIONS]},
    }
)


def resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return strict(
        {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "namespace": {"type": "string"},
                    "labels": STRING_MAP,
                    "annotations": STRING_MAP,
                },
                "required": ["name"],
            },
            "spec": spec,
        },
        "apiVersion",
        "kind",
        "metadata",
        "spec",
    )


POD_METRICS_ENDPOINT = strict(
    {
        "port": {"type": "string", "minLength": 1},
        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {"type": "object", "additionalProperties": STRINGS},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "filterRunning": {"type": "boolean"},
        "relabelings": {"type": "array", "items": RELABEL_CONFIG},
        "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
    }
)

POD_MONITOR = resource(
    "PodMonitor",
    strict(
        {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": strict({"any": {"type": "boolean"}, "matchNames": STRINGS}),
            "podMetricsEndpoints": {"type": "array", "items": POD_METRICS_ENDPOINT},
            "jobLabel": {"type": "string"},
            "podTargetLabels": STRINGS,
            "sampleLimit": {"type": "integer", "minimum": 0},
            "targetLimit": {"type": "integer", "minimum": 0},
        },
        "selector",
    ),
)

RULE = {
    **strict(
        {
            "record": {"type": "string", "minLength": 1},
            "alert": {"type": "string", "minLength": 1},
            "expr": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]},
            "for": DURATION,
            "keep_firing_for": DURATION,
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        },
        "expr",
    ),
    # exactly one of record and alert
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}

PROMETHEUS_RULE = resource(
    "PrometheusRule",
    strict(
        {
            "groups": {
                "type": "array",
                "items": strict(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "interval": DURATION,
                        "limit": {"type": "integer"},
                        "query_offset": DURATION,
                        "partial_response_strategy": {"type": "string"},
                        "labels": STRING_MAP,
                        "rules": {"type": "array", "items": RULE},
                    },
                    "name",
                ),
            }
        }
    ),
)

SCHEMAS = {"PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
