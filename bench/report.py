"""The numbers of a run, derived from the load client's raw results, as Markdown tables.

Everything relative ("added", "x pipe") compares paths measured in the same run, on the same
workload, against the same simulated upstream.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from timing import summary

DIRECT, INTACT, PIPE, LITELLM = "direct", "intact", "byte pipe", "LiteLLM"
ADDED_P99_LIMIT_MS = 10.0


@dataclass(frozen=True)
class Workload:
    """N concurrent streams of ``tok_per_s`` chunks each, optionally interrupted."""

    streams: int
    tok_per_s: float
    fault_rate: float = 0.0

    @property
    def name(self) -> str:
        base = f"{self.streams}x{self.tok_per_s:g}"
        return f"{base}@{self.fault_rate * 100:g}%" if self.fault_rate else base

    def describe(self) -> str:
        text = f"{self.streams:,} concurrent streams x {self.tok_per_s:g} tokens/s"
        if self.fault_rate:
            text += f", {self.fault_rate * 100:g}% of upstream attempts interrupted"
        return text

    @classmethod
    def parse(cls, text: str, fault_rate: float) -> Workload:
        """Parse "1000x20", or "1000x20-faults" for the same interrupted at ``fault_rate``."""
        spec, _, suffix = text.strip().partition("-")
        if suffix not in ("", "faults"):
            raise ValueError(f"workload {text!r}: the only suffix is -faults")
        streams, sep, rate = spec.partition("x")
        if not sep or not streams.isdigit() or int(streams) < 1:
            raise ValueError(f"workload {text!r} must look like 1000x20 or 1000x20-faults")
        return cls(int(streams), float(rate), fault_rate if suffix else 0.0)


@dataclass
class Measured:
    """One path on one workload, every round added up."""

    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    relay_wait_s: float = 0.0
    window_s: float = 0.0
    chunks: int = 0
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    open_at_peak: int = 0
    late_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    retry_ttft_ms: list[float] = field(default_factory=list)
    recovery_gap_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    gate_s: float = 0.0
    """Seconds waited past the warm-up for 99% of the streams to be flowing (all rounds)."""
    intact_recovery: tuple[float, int] = (0.0, 0)
    """intact's own recovery histogram over the phase: (seconds summed, count)."""

    def add(self, r: dict[str, Any]) -> None:
        if not self.rounds:
            self.rss_before_kib = r["rss_before_kib"]
        self.rounds += 1
        for key in (
            "cpu_s",
            "sim_cpu_s",
            "client_cpu_s",
            "others_cpu_s",
            "relay_wait_s",
            "window_s",
        ):
            setattr(self, key, getattr(self, key) + r[key])
        self.chunks += r["chunks"]
        self.gate_s += r.get("gate_s", 0.0)
        if r["rss_peak_kib"] > self.rss_peak_kib:
            self.rss_peak_kib, self.open_at_peak = r["rss_peak_kib"], r["open_at_peak"]
        for key in ("late_ms", "ttft_ms", "retry_ttft_ms", "recovery_gap_ms"):
            getattr(self, key).extend(r[key])
        self.outcomes.update(r["outcomes"])

    @property
    def rate(self) -> float:
        return self.chunks / self.window_s if self.window_s else 0.0

    @property
    def us_per_chunk(self) -> float:
        return self.cpu_s / self.chunks * 1e6 if self.chunks else math.nan

    @property
    def core_pct(self) -> float:
        return 100 * self.cpu_s / self.window_s if self.window_s else math.nan

    def pct(self, values: str, p: int) -> float:
        return summary(getattr(self, values))["p50" if p == 50 else "p99"]

    @property
    def kib_per_stream(self) -> float:
        if not self.open_at_peak or not self.rss_peak_kib:
            return math.nan
        return (self.rss_peak_kib - self.rss_before_kib) / self.open_at_peak

    def beyond_ms(self, wl: Workload, backoff_ms: float, ttft_ms: float) -> list[float]:
        """Per resumed stream: the silence at the interruption minus the chunk interval,
        the backoff and the upstream's time to first token (what recovery itself added)."""
        interval = 1000 / wl.tok_per_s
        return [gap - interval - backoff_ms - ttft_ms for gap in self.recovery_gap_ms]

    def failed(self) -> Counter[str]:
        return Counter({k: v for k, v in self.outcomes.items() if k not in ("complete", "open")})


Results = dict[Workload, dict[str, Measured]]


def fmt(value: float, digits: int = 1, plus: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+,.{digits}f}" if plus else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def workload_table(wl: Workload, by_path: dict[str, Measured], order: Sequence[str]) -> str:
    ref = by_path.get(DIRECT)
    pipe = by_path.get(PIPE)
    rows = []
    for name in order:
        m = by_path.get(name)
        if m is None:
            continue
        p50, p99 = m.pct("late_ms", 50), m.pct("late_ms", 99)
        t50, t99 = m.pct("ttft_ms", 50), m.pct("ttft_ms", 99)
        relay = name != DIRECT
        if relay and ref is not None:
            added = (
                f"{fmt(p50 - ref.pct('late_ms', 50), 2, True)} / "
                f"{fmt(p99 - ref.pct('late_ms', 99), 2, True)}"
            )
            added_ttft = (
                f"{fmt(t50 - ref.pct('ttft_ms', 50), 1, True)} / "
                f"{fmt(t99 - ref.pct('ttft_ms', 99), 1, True)}"
            )
        else:
            added = added_ttft = "(reference)"
        vs_pipe = (
            f"{m.us_per_chunk / pipe.us_per_chunk:.2f}x"
            if relay and pipe is not None and pipe.chunks and m.chunks
            else ""
        )
        failed = m.failed()
        rows.append(
            [
                name,
                fmt(m.rate, 0),
                fmt(m.core_pct, 0) + "%" if relay else "",
                fmt(m.us_per_chunk, 1) if relay else "",
                vs_pipe,
                f"{fmt(p50, 2)} / {fmt(p99, 2)}",
                added,
                f"{fmt(t50, 1)} / {fmt(t99, 1)}",
                added_ttft,
                f"{m.rss_before_kib / 1024:,.0f} -> {m.rss_peak_kib / 1024:,.0f}" if relay else "",
                fmt(m.kib_per_stream, 1) if relay else "",
                ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "0",
                " / ".join(
                    f"{fmt(x / m.window_s * 100, 0)}%"
                    for x in (m.sim_cpu_s, m.client_cpu_s, m.others_cpu_s)
                )
                if m.window_s
                else "",
                f"{fmt(m.relay_wait_s / m.window_s * 100, 0)}%" if relay and m.window_s else "",
            ]
        )
    header = [
        "path",
        "chunks/s",
        "relay CPU",
        "CPU us/chunk",
        "vs pipe",
        "chunk lateness p50 / p99 ms",
        "added p50 / p99 ms",
        "TTFT p50 / p99 ms",
        "added TTFT p50 / p99 ms",
        "RSS MiB before -> peak",
        "KiB per open stream",
        "streams not whole",
        "CPU of sim / client / other processes",
        "relay runnable, waiting for a CPU",
    ]
    return table(header, rows)


def fault_table(
    wl: Workload,
    by_path: dict[str, Measured],
    order: Sequence[str],
    *,
    backoff_ms: float,
    ttft_ms: float,
) -> str:
    rows = []
    for name in order:
        m = by_path.get(name)
        if m is None:
            continue
        total = sum(v for k, v in m.outcomes.items() if k != "open")
        o = m.outcomes
        explicit = sum(v for k, v in o.items() if k.startswith(("http_", "error_event")))
        beyond = m.beyond_ms(wl, backoff_ms, ttft_ms)
        retry = [t - 2 * ttft_ms - backoff_ms for t in m.retry_ttft_ms]
        own_sum, own_n = m.intact_recovery
        own = (
            f"{fmt(own_sum / own_n * 1000 - backoff_ms - ttft_ms, 1, True)} (n={own_n})"
            if own_n
            else ""
        )
        s = summary(beyond)
        rows.append(
            [
                name,
                str(total),
                str(o.get("complete", 0)),
                str(len(m.recovery_gap_ms) + len(m.retry_ttft_ms)),
                str(explicit),
                str(o.get("broken", 0)),
                str(o.get("cut", 0)),
                f"{fmt(s['p50'], 1, True)} / {fmt(s['p99'], 1, True)} (n={int(s['n'])})"
                if beyond
                else "",
                f"{fmt(summary(retry)['p50'], 1, True)} (n={len(retry)})" if retry else "",
                own,
            ]
        )
    header = [
        "path",
        "streams ended",
        "whole answers",
        "recovered by the relay",
        "explicit errors",
        "connection broken",
        "silently cut (no [DONE])",
        "resume: ms beyond backoff + TTFT, p50 / p99",
        "retry before 1st chunk: ms beyond",
        "intact's own recovery metric: mean ms beyond",
    ]
    return table(header, rows)


def max_rate_table(sweep: dict[str, list[tuple[float, float]]], order: Sequence[str]) -> str:
    """Per path: the highest measured chunk rate whose added p99 stayed within 10 ms."""
    rows = []
    for name in order:
        steps = sweep.get(name)
        if not steps:
            continue
        ok: list[float] = []
        for rate, added in steps:
            if not added <= ADDED_P99_LIMIT_MS:  # NaN (nothing measured) counts as passed
                break
            ok.append(rate)
        best = f"{ok[-1]:,.0f} chunks/s" if ok else "below the first step"
        if len(ok) == len(steps):
            best = f">= {best} (the sweep's last step)"
        detail = ", ".join(f"{rate:,.0f}: {fmt(added, 1, True)}" for rate, added in steps)
        rows.append([name, best, detail])
    header = ["path", "highest chunk rate, added p99 <= 10 ms", "steps (chunks/s: added p99 ms)"]
    return table(header, rows)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def _find(results: Results, streams: int, tok_per_s: float) -> dict[str, Measured]:
    for wl, by_path in results.items():
        if wl.streams == streams and wl.tok_per_s == tok_per_s and not wl.fault_rate:
            return by_path
    return {}


def targets(results: Results, backoff_ms: float, ttft_ms: float) -> str:
    """The issue's targets, each judged on this run's numbers."""
    rows: list[list[str]] = []
    clean = [(wl, m) for wl, m in results.items() if not wl.fault_rate]

    ratios = [
        (wl.name, m[INTACT].us_per_chunk / m[PIPE].us_per_chunk)
        for wl, m in clean
        if INTACT in m and PIPE in m and m[PIPE].chunks and m[INTACT].chunks
    ]
    rows.append(
        [
            "CPU per relayed chunk <= 1.15x the byte pipe's, telemetry on",
            ", ".join(f"{n}: {r:.2f}x" for n, r in ratios),
            _verdict(all(r <= 1.15 for _, r in ratios) if ratios else None),
        ]
    )

    m = _find(results, 1000, 50).get(INTACT)
    if m is not None:
        cores = f"{m.core_pct:.0f}% of a core at {m.rate:,.0f} chunks/s (measured)"
        ok: bool | None = m.core_pct <= 100 and m.rate >= 0.95 * 50_000
    else:  # projected from the CPU per chunk at 1,000 x 20 (2 cores cannot feed 50,000/s)
        m = _find(results, 1000, 20).get(INTACT)
        if m is not None and m.chunks:
            projected = m.us_per_chunk * 50_000 / 1e6
            cores = (
                f"projected {projected * 100:.0f}% of a core ({m.us_per_chunk:.1f} us/chunk "
                "at 1,000 x 20 times 50,000 chunks/s)"
            )
            ok = projected <= 1.0
        else:
            cores, ok = "", None
    rows.append(["1,000 streams x 50 tokens/s on at most one core", cores, _verdict(ok)])

    by = _find(results, 1000, 20)
    if INTACT in by and DIRECT in by:
        added = by[INTACT].pct("late_ms", 99) - by[DIRECT].pct("late_ms", 99)
        rows.append(
            [
                "added p99 chunk delay <= 2 ms at 1,000 streams x 20 tokens/s",
                f"{added:+.2f} ms",
                _verdict(added <= 2.0),
            ]
        )
    else:
        rows.append(["added p99 chunk delay <= 2 ms at 1,000 x 20 tokens/s", "", _verdict(None)])

    big = [(wl, m[INTACT]) for wl, m in clean if wl.streams >= 5000 and INTACT in m]
    if big:
        wl, m = max(big, key=lambda item: item[0].streams)
        mb = m.rss_peak_kib * 1024 / 1e6
        at_10k = (m.rss_before_kib + m.kib_per_stream * 10_000) * 1024 / 1e6
        text = f"{mb:,.0f} MB with {m.open_at_peak:,} streams open"
        if m.open_at_peak < 10_000:
            text += f" (at 10,000: {at_10k:,.0f} MB, extrapolated per stream)"
        rows.append(
            [
                "10,000 concurrent open streams in one process at <= 600 MB RSS",
                text,
                _verdict(max(mb, at_10k) <= 600),
            ]
        )
    else:
        rows.append(["10,000 open streams at <= 600 MB RSS", "", _verdict(None)])

    parts, verdicts = [], []
    for wl, by_path in results.items():
        if wl.fault_rate and INTACT in by_path:
            beyond = by_path[INTACT].beyond_ms(wl, backoff_ms, ttft_ms)
            if beyond:
                st = summary(beyond)
                parts.append(
                    f"{wl.name}: p50 {st['p50']:+.1f} ms, p99 {st['p99']:+.1f} ms "
                    f"({len(beyond)} resumes)"
                )
                verdicts.append(st["p50"] <= 10)
    rows.append(
        [
            "recovery adds <= 10 ms beyond backoff + the upstream's TTFT (judged on p50)",
            "; ".join(parts),
            _verdict(all(verdicts) if verdicts else None),
        ]
    )

    vs = [
        (wl.name, m[LITELLM].us_per_chunk / m[INTACT].us_per_chunk)
        for wl, m in clean
        if INTACT in m and LITELLM in m and m[INTACT].chunks and m[LITELLM].chunks
    ]
    rows.append(
        [
            "at least 15x less CPU per chunk than LiteLLM's proxy",
            ", ".join(f"{n}: {r:.1f}x" for n, r in vs),
            _verdict(all(r >= 15 for _, r in vs) if vs else None),
        ]
    )
    return table(["target", "this run", "verdict"], rows)


def summary_table(
    results: Results,
    rest_rss: dict[str, int],
    sweep: dict[str, list[tuple[float, float]]],
    order: Sequence[str],
) -> str:
    """One row per relay: its cost on every clean workload, at a glance."""
    clean = [wl for wl in results if not wl.fault_rate]
    header = ["path", "RSS at rest MiB"]
    header += [f"CPU us/chunk {wl.name}" for wl in clean]
    header += [f"added p99 ms {wl.name}" for wl in clean]
    header += ["highest chunk rate, added p99 <= 10 ms"]
    rows = []
    for name in order:
        if name == DIRECT:
            continue
        row = [name, f"{rest_rss[name] / 1024:,.0f}" if name in rest_rss else ""]
        for wl in clean:
            m = results[wl].get(name)
            row.append(fmt(m.us_per_chunk, 1) if m else "")
        for wl in clean:
            m, ref = results[wl].get(name), results[wl].get(DIRECT)
            row.append(
                fmt(m.pct("late_ms", 99) - ref.pct("late_ms", 99), 1, True) if m and ref else ""
            )
        steps = sweep.get(name, [])
        ok = []
        for rate, added in steps:
            if not added <= ADDED_P99_LIMIT_MS:
                break
            ok.append(rate)
        row.append(
            ""
            if not steps
            else (f"{ok[-1]:,.0f}/s" if ok else "below the first step")
            + (" or more" if steps and len(ok) == len(steps) else "")
        )
        rows.append(row)
    return table(header, rows)


def as_json(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """The key numbers per workload and path (NaN becomes null)."""

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 3)

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for wl, by_path in results.items():
        out[wl.name] = {
            name: {
                "chunks_per_s": num(m.rate),
                "cpu_us_per_chunk": num(m.us_per_chunk),
                "lateness_ms_p50": num(m.pct("late_ms", 50)),
                "lateness_ms_p99": num(m.pct("late_ms", 99)),
                "ttft_ms_p50": num(m.pct("ttft_ms", 50)),
                "rss_peak_kib": m.rss_peak_kib,
                "recovered": len(m.recovery_gap_ms) + len(m.retry_ttft_ms),
                "outcomes": dict(m.outcomes),
            }
            for name, m in by_path.items()
        }
    return out
