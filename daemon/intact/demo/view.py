"""How `intact demo` shows itself: a rich live panel, plain progress lines, a final summary.

Everything here is a pure function of a `DemoSnapshot` (plain numbers gathered by
`demo.run`), so the view never touches the relay or the simulator itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from intact.demo.outcomes import BreakerEvent
from intact.resilience.breaker import BreakerState

BREAKER_STYLE = {
    BreakerState.CLOSED: "green",
    BreakerState.HALF_OPEN: "yellow",
    BreakerState.OPEN: "bold red",
}


def breaker_label(state: BreakerState) -> str:
    return state.name.lower().replace("_", "-")


@dataclass(frozen=True)
class UpstreamView:
    name: str
    breaker: BreakerState
    budget_balance: float
    """Retry tokens available now (retries + resumes the budget would allow)."""
    attempts_in_flight: int


@dataclass(frozen=True)
class OutageView:
    """The scripted outage (--down-at/--down-for), in seconds since the demo started."""

    down_at: float
    down_for: float
    phase: str
    """"scheduled", "down" or "restored"."""
    requests_while_open: int
    """Chat requests that reached the upstream while its breaker was open."""
    first_whole_after: float | None
    """Seconds from the upstream coming back to the first stream delivered whole."""
    breaker_closed_after: float | None
    """Seconds from the upstream coming back to its breaker closing again."""


@dataclass(frozen=True)
class DemoSnapshot:
    """Everything the view shows at one moment."""

    elapsed: float
    streams_done: int
    rate: float
    active_streams: int
    exact: int
    recovered: int
    explicit_errors: int
    silent: int
    garbled: int
    upstream_attempts: int
    """Chat requests the simulated upstream served while up (retries and resumes included)."""
    faults_injected: int
    down_rejections: int
    """Requests the upstream refused (503) while switched to "down"."""
    fault_rate: float
    upstreams: tuple[UpstreamView, ...]
    error_codes: tuple[tuple[str, int], ...]
    ttft_p50: float | None
    ttft_p95: float | None
    outage: OutageView | None = None
    metrics_url: str | None = None
    cancelled: int = 0
    """Requests cut by a forced stop (not judged)."""

    @property
    def broken(self) -> int:
        return self.silent + self.garbled

    @property
    def interruption_rate(self) -> float:
        """Faulted upstream attempts / upstream attempts."""
        return self.faults_injected / self.upstream_attempts if self.upstream_attempts else 0.0


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _codes(codes: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{code} ×{count}" for code, count in codes)


def _interruptions(s: DemoSnapshot) -> str:
    line = (
        f"{s.faults_injected:,} of {s.upstream_attempts:,} upstream attempts "
        f"({_pct(s.faults_injected, s.upstream_attempts)}; configured {s.fault_rate:.1%})"
    )
    if s.down_rejections:
        line += f", plus {s.down_rejections:,} refused while down"
    return line


def _outage_phase(o: OutageView) -> str:
    if o.phase == "scheduled":
        return f"scheduled at {o.down_at:.0f} s for {o.down_for:.0f} s"
    if o.phase == "down":
        return f"upstream DOWN since {o.down_at:.0f} s (back at {o.down_at + o.down_for:.0f} s)"
    return f"upstream was down {o.down_at:.0f}-{o.down_at + o.down_for:.0f} s"


def render_live(s: DemoSnapshot) -> RenderableType:
    """The live panel (rich.live.Live refreshes it a few times a second)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", justify="right")
    table.add_column()
    table.add_row("elapsed", f"{s.elapsed:.1f} s")
    table.add_row("streams done", f"{s.streams_done:,}  ({s.rate:.1f} req/s)")
    table.add_row("active streams", f"{s.active_streams}")
    table.add_row("interruptions", _interruptions(s))
    table.add_row(
        "delivered complete",
        Text(f"{s.exact:,}  ({_pct(s.exact, s.streams_done)} byte-exact)", style="green"),
    )
    table.add_row("recovered", f"{s.recovered:,}  (interrupted upstream, delivered whole)")
    errors = f"{s.explicit_errors:,}"
    if s.error_codes:
        errors += f"  ({_codes(s.error_codes)})"
    table.add_row("explicit errors", Text(errors, style="yellow" if s.explicit_errors else ""))
    broken_style = "bold red" if s.broken else "green"
    table.add_row(
        "reached app BROKEN",
        Text(
            f"{s.broken}  (silent truncation {s.silent}, garbled {s.garbled})", style=broken_style
        ),
    )
    table.add_row("TTFT p50 / p95", f"{_seconds(s.ttft_p50)} / {_seconds(s.ttft_p95)}")
    for up in s.upstreams:
        state = Text(breaker_label(up.breaker), style=BREAKER_STYLE[up.breaker])
        table.add_row(
            f"upstream {up.name}",
            Text.assemble(
                "breaker ",
                state,
                f" · retry budget {up.budget_balance:.0f} · in flight {up.attempts_in_flight}",
            ),
        )
    if s.outage is not None:
        o = s.outage
        style = "bold red" if o.phase == "down" else ""
        table.add_row("outage", Text(_outage_phase(o), style=style))
        if o.phase != "scheduled":
            table.add_row("", f"requests to upstream while breaker open: {o.requests_while_open}")
        if o.phase == "restored":
            table.add_row(
                "",
                f"upstream back -> first whole stream: "
                f"{_seconds(o.first_whole_after)}, breaker closed: "
                f"{_seconds(o.breaker_closed_after)}",
            )
    footer = Text("Ctrl-C: stop the load, drain, print a summary", style="dim")
    if s.metrics_url:
        footer = Text(f"metrics {s.metrics_url} · ", style="dim") + footer
    title = f"intact demo - simulated upstream, {s.fault_rate:.1%} interruption rate"
    return Panel(Group(table, Text(""), footer), title=title, title_align="left")


def plain_line(s: DemoSnapshot) -> str:
    """One progress line (--no-live, or stdout not a terminal)."""
    upstreams = " ".join(
        f"{u.name}:{breaker_label(u.breaker)}/budget={u.budget_balance:.0f}" for u in s.upstreams
    )
    line = (
        f"t={s.elapsed:5.1f}s streams={s.streams_done} rate={s.rate:.1f}/s "
        f"active={s.active_streams} exact={s.exact} recovered={s.recovered} "
        f"explicit_errors={s.explicit_errors} broken={s.broken} "
        f"interruptions={s.faults_injected}/{s.upstream_attempts} "
        f"({_pct(s.faults_injected, s.upstream_attempts)}) breaker={upstreams}"
    )
    if s.outage is not None and s.outage.phase == "down":
        line += " UPSTREAM-DOWN"
    return line


def summary_text(
    s: DemoSnapshot,
    breaker_events: Sequence[BreakerEvent],
    *,
    started_at: float,
    anomalies: Sequence[str] = (),
) -> str:
    """The closing summary, plain text for pasting into a note."""
    rows = [
        ("duration", f"{s.elapsed:.1f} s"),
        ("streams", f"{s.streams_done:,} ({s.streams_done / s.elapsed if s.elapsed else 0:.1f}/s)"),
        ("delivered exact", f"{s.exact:,} ({_pct(s.exact, s.streams_done)})"),
        ("recovered", f"{s.recovered:,} (interrupted upstream, delivered whole)"),
        (
            "explicit errors",
            f"{s.explicit_errors:,}" + (f" ({_codes(s.error_codes)})" if s.error_codes else ""),
        ),
        ("broken", f"{s.broken} (silent truncation {s.silent}, garbled {s.garbled})"),
        ("interruption rate", _interruptions(s)),
        ("TTFT p50 / p95", f"{_seconds(s.ttft_p50)} / {_seconds(s.ttft_p95)}"),
    ]
    if s.cancelled:
        rows.append(("cancelled", f"{s.cancelled} (cut by a forced stop, not judged)"))
    if breaker_events:
        events = ", ".join(
            f"{e.upstream} {breaker_label(e.old)}->{breaker_label(e.new)} at "
            f"{e.at - started_at:.1f} s"
            for e in breaker_events
        )
    else:
        events = "none (every breaker stayed closed)"
    rows.append(("breaker events", events))
    if s.outage is not None:
        o = s.outage
        rows.append(("outage", _outage_phase(o)))
        if o.phase != "scheduled":
            rows.append(("to upstream while open", f"{o.requests_while_open} requests"))
        if o.phase == "restored":
            rows.append(("back -> first whole", _seconds(o.first_whole_after)))
            rows.append(("back -> breaker closed", _seconds(o.breaker_closed_after)))
    width = max(len(label) for label, _ in rows)
    lines = ["intact demo summary"] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if anomalies:
        lines.append("first broken streams:")
        lines += ["  " + line for a in anomalies for line in a.splitlines()]
    return "\n".join(lines)


__all__ = [
    "DemoSnapshot",
    "OutageView",
    "UpstreamView",
    "breaker_label",
    "plain_line",
    "render_live",
    "summary_text",
]
