"""`intact status`: what a running daemon is doing, read from its admin listener.

It reads ``/debug/state`` (breakers, budgets, stream slots per upstream, streams per app,
app connections), ``/readyz`` and ``/metrics`` (streams by outcome, interruptions,
recovered tokens), and folds them into one JSON document for scripts; ``intact top`` shows
the same document live. Standard library and the daemon's own dependencies only: no
``rich``, so it works on a host with the daemon alone.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from intact.config import Config

OUTCOMES: Final = ("completed", "recovered", "failed", "rejected", "cancelled")
# Streams whose health the interruption rate judges (README: rejected/cancelled say nothing).
JUDGED: Final = ("completed", "recovered", "failed")


class AdminUnreachable(RuntimeError):
    """The admin listener did not answer (daemon down, wrong address, admin off)."""


def admin_url(config: Config) -> str:
    """The admin listener's URL for ``server.metrics_addr`` (a wildcard host is reached on
    loopback)."""
    addr = config.server.metrics_addr
    if addr == "off":
        raise AdminUnreachable(
            "server.metrics_addr is 'off' in this config, so the daemon has no admin "
            "listener; pass --admin http://HOST:PORT of one that has"
        )
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class AdminReadings:
    """What one visit to the admin listener returned."""

    state: dict[str, Any]
    ready: bool
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] | None  # None: no /metrics
    taken_at: float  # time.monotonic()


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:  # a status the daemon chose (404, 503): a reading
        return exc.code, exc.read()
    except (OSError, ValueError) as exc:
        raise AdminUnreachable(f"cannot reach the intact admin listener at {url}: {exc}") from None


def request_reload(admin: str, *, timeout: float = 10.0) -> tuple[bool, str]:
    """POST /admin/reload: (applied, what to tell the person)."""
    url = admin.rstrip("/") + "/admin/reload"
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return True, "intact: reloaded"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False, f"intact reload: {url} not found (a daemon not started by `intact run`?)"
        return False, "intact reload: the new config was rejected; the daemon's log says why"
    except (OSError, ValueError) as exc:
        raise AdminUnreachable(f"cannot reach the intact admin listener at {url}: {exc}") from None


def read_admin(admin: str, *, timeout: float = 2.0) -> AdminReadings:
    base = admin.rstrip("/")
    status, body = _get(f"{base}/debug/state", timeout)
    if status != 200:
        raise AdminUnreachable(f"{base}/debug/state answered HTTP {status}: not an intact admin?")
    state = json.loads(body)
    ready_status, _ = _get(f"{base}/readyz", timeout)
    metrics_status, metrics = _get(f"{base}/metrics", timeout)
    samples = parse_metrics(metrics.decode()) if metrics_status == 200 else None
    return AdminReadings(state, ready_status == 200, samples, time.monotonic())


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum_by(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, *keys: str
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            got = dict(labels)
            key = tuple(got.get(k, "") for k in keys)
            out[key] = out.get(key, 0.0) + value
    return out


def _outcomes(counts: Mapping[tuple[str, ...], float], *prefix: str) -> dict[str, int]:
    return {o: int(counts.get((*prefix, o), 0.0)) for o in OUTCOMES}


def interruption_rate(streams: Mapping[str, int]) -> float | None:
    """(recovered + failed) / (completed + recovered + failed); None before any stream."""
    judged = sum(streams.get(o, 0) for o in JUDGED)
    if not judged:
        return None
    return (streams.get("recovered", 0) + streams.get("failed", 0)) / judged


def build_status(admin: str, readings: AdminReadings) -> dict[str, Any]:
    """The JSON document of ``intact status`` (and the data behind ``intact top``)."""
    state, samples = readings.state, readings.samples
    have_metrics = samples is not None
    m = samples or {}
    by_upstream = _sum_by(m, "intact_streams_total", "upstream", "outcome")
    by_app = _sum_by(m, "intact_app_streams_total", "app", "outcome")
    recovered = _sum_by(m, "intact_recovered_tokens_total", "upstream")
    interruptions = _sum_by(m, "intact_interruptions_total", "kind")
    streams = _outcomes(_sum_by(m, "intact_streams_total", "outcome"))
    started = m.get(("process_start_time_seconds", frozenset()))

    def metric(value: Any) -> Any:
        return value if have_metrics else None

    upstreams = [
        {
            "name": up["name"],
            "breaker": str(up["breaker"]["state"]).lower(),
            "failure_rate": up["breaker"]["failure_rate"],
            "calls_in_window": up["breaker"]["calls"],
            "open_remaining_s": up["breaker"]["open_remaining"],
            "retry_budget": up["retry_budget"]["balance"],
            "retry_budget_exhausted": up["retry_budget"]["exhausted"],
            "active_streams": up["streams"]["active"],
            "queued": up["streams"]["queued"],
            "max_concurrent_streams": up["streams"]["max_concurrent"],
            "streams": metric(_outcomes(by_upstream, up["name"])),
            "recovered_tokens": metric(int(recovered.get((up["name"],), 0.0))),
        }
        for up in state.get("upstreams", ())
    ]
    apps = [
        {
            "name": app["name"],
            "active_streams": app["active_streams"],
            "max_concurrent_streams": app["max_concurrent_streams"],
            "streams": metric(_outcomes(by_app, app["name"])),
            "refused": app["refused"],
        }
        for app in state.get("apps", ())
    ]
    return {
        "admin": admin,
        "version": state.get("version"),
        "ready": readings.ready,
        "uptime_s": metric(round(time.time() - started, 1) if started else None),
        "active_streams": state.get("active_requests"),
        "streams": metric(streams),
        "interruption_rate": metric(interruption_rate(streams)),
        "interruptions": metric({k[0]: int(v) for k, v in sorted(interruptions.items()) if v}),
        "recovered_tokens": metric(int(sum(recovered.values()))),
        "upstreams": upstreams,
        "apps": apps,
        "connections": state.get("connections"),
    }


def streams_per_second(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], seconds: float
) -> float | None:
    """Finished streams per second between two status documents (for ``intact top``)."""
    if before is None or seconds <= 0 or not before.get("streams") or not after.get("streams"):
        return None
    done: int = sum(after["streams"].values()) - sum(before["streams"].values())
    return max(0.0, done / seconds)


__all__ = [
    "AdminReadings",
    "AdminUnreachable",
    "admin_url",
    "build_status",
    "interruption_rate",
    "read_admin",
    "streams_per_second",
]
