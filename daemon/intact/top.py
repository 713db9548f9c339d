"""`intact top`: a running daemon, live, as the demo shows its own (needs ``rich``, which
comes with the demo extra).

Every ``--interval`` seconds it reads the admin listener (``intact.status``) and redraws:
streams by outcome and per second, the interruption rate, recovered tokens, and per
upstream the breaker, retry budget and streams in flight, per app the streams in flight
against its limit and what was refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from intact.demo.view import BREAKER_STYLE, breaker_label
from intact.resilience.breaker import BreakerState
from intact.status import AdminUnreachable, build_status, read_admin, streams_per_second

UPSTREAM_COLUMNS = ("fail rate", "retry budget", "in flight", "done", "recovered", "failed")
# Width of a frame printed to a pipe or file (--once), where there is no terminal to fit.
ONCE_WIDTH = 120


def _breaker(state: str) -> Text:
    try:
        known = BreakerState[state.upper()]
    except KeyError:
        return Text(state)
    return Text(breaker_label(known), style=BREAKER_STYLE[known])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _outcomes(streams: Mapping[str, int] | None) -> str:
    if streams is None:
        return "- (no /metrics)"
    return "  ".join(f"{name} {count:,}" for name, count in streams.items())


def render(status: Mapping[str, Any], rate: float | None, error: str | None = None) -> Panel:
    """One frame of ``intact top`` from a status document (``intact.status.build_status``)."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", justify="right")
    summary.add_column()
    ready = Text("ready", style="green") if status["ready"] else Text("NOT READY", "bold red")
    uptime = status.get("uptime_s")
    summary.add_row(
        "daemon",
        Text.assemble(
            f"intact {status['version']} at {status['admin']} · ",
            ready,
            f" · up {uptime:,.0f} s" if uptime is not None else "",
        ),
    )
    streams = status.get("streams")
    done = sum(streams.values()) if streams else None
    per_second = "" if rate is None else f"  ({rate:.1f}/s)"
    summary.add_row("active streams", f"{status['active_streams']}")
    summary.add_row("streams done", f"{done:,}{per_second}" if done is not None else "-")
    summary.add_row("by outcome", _outcomes(streams))
    summary.add_row("interruption rate", _pct(status.get("interruption_rate")))
    kinds = status.get("interruptions") or {}
    if kinds:
        summary.add_row("interruptions", "  ".join(f"{k} {v:,}" for k, v in kinds.items()))
    recovered = status.get("recovered_tokens")
    summary.add_row("recovered tokens", "-" if recovered is None else f"{recovered:,}")
    conns = status.get("connections")
    if conns:
        summary.add_row(
            "app connections",
            f"{conns['open']} open from {conns['peers']} peers · busiest "
            f"{conns['busiest_peer_connections']}/{conns['max_connections_per_peer']} · "
            f"refused over cap {conns['refused_over_limit']} · read timeouts "
            f"{conns['read_timeouts']}",
        )

    upstreams = Table(title="upstreams", title_justify="left", box=box.SIMPLE_HEAD)
    upstreams.add_column("upstream", no_wrap=True)
    upstreams.add_column("breaker", no_wrap=True)
    for column in UPSTREAM_COLUMNS:
        upstreams.add_column(column, justify="right")
    for up in status["upstreams"]:
        s = up.get("streams")
        spent = up["retry_budget_exhausted"]
        queued = f" +{up['queued']} queued" if up["queued"] else ""
        upstreams.add_row(
            up["name"],
            _breaker(up["breaker"]),
            _pct(up["failure_rate"]),
            f"{up['retry_budget']:.0f}" + (f" ({spent:,} refused)" if spent else ""),
            f"{up['active_streams']}/{up['max_concurrent_streams']}{queued}",
            "-" if s is None else f"{sum(s.values()):,}",
            "-" if s is None else f"{s['recovered']:,}",
            "-" if s is None else f"{s['failed']:,}",
        )

    parts: list[RenderableType] = [summary, Text(""), upstreams]
    if status["apps"]:
        apps = Table(title="apps", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("app", "in flight", "streams done", "failed", "refused"):
            apps.add_column(column, justify="left" if column == "app" else "right")
        for app in status["apps"]:
            limit = app["max_concurrent_streams"]
            done_app = sum(app["streams"].values()) if app.get("streams") else None
            refused = ", ".join(f"{k} {v}" for k, v in app["refused"].items() if v) or "0"
            apps.add_row(
                app["name"],
                f"{app['active_streams']}/{limit if limit else '∞'}",
                "-" if done_app is None else f"{done_app:,}",
                f"{(app.get('streams') or {}).get('failed', '-')}",
                refused,
            )
        parts += [Text(""), apps]
    if error:
        parts += [Text(""), Text(error, style="bold red")]
    parts += [Text(""), Text("Ctrl-C: quit", style="dim")]
    return Panel(Group(*parts), title="intact top", title_align="left")


def _unreachable(admin: str, error: str) -> Panel:
    return Panel(Text(error, style="bold red"), title=f"intact top - {admin}", title_align="left")


def run_top(admin: str, *, interval: float, once: bool, console: Console | None = None) -> int:
    """Show the daemon behind ``admin`` until Ctrl-C (or one frame with ``once``)."""
    if once:
        fits = Console().is_terminal or "COLUMNS" in os.environ
        console = console or Console(width=None if fits else ONCE_WIDTH)
        readings = read_admin(admin)  # AdminUnreachable: the caller reports it
        console.print(render(build_status(admin, readings), None))
        return 0
    console = console or Console()
    previous: tuple[dict[str, Any], float] | None = None
    frame: RenderableType = Text(f"connecting to {admin} ...")
    try:
        with Live(frame, console=console, refresh_per_second=4, screen=False) as live:
            while True:
                try:
                    readings = read_admin(admin)
                except AdminUnreachable as exc:
                    live.update(_unreachable(admin, str(exc)))
                else:
                    status = build_status(admin, readings)
                    rate = (
                        streams_per_second(previous[0], status, readings.taken_at - previous[1])
                        if previous is not None
                        else None
                    )
                    previous = (status, readings.taken_at)
                    live.update(render(status, rate))
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0


__all__ = ["render", "run_top"]
