"""The longest an app can wait, and the most upstream calls it can cause, per failure
pattern, for a resolved config: what `intact check-config` prints and the README documents.

Each figure is an upper bound derived from the same settings the relay obeys, so an SRE can
see what a config promises before deploying it: a silent upstream (no first event, ever), a
slow first token, a persistent 429 that names no wait, a persistent 5xx. Until the app has
its first chunk every wait is also capped by ``stream.answer_start_timeout``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from intact.config import Config, UpstreamConfig

# Jitter of the rate-limit pacing: a step is base·2ⁿ times up to this factor.
RATE_LIMIT_JITTER = 1.5


@dataclass(frozen=True, slots=True)
class WorstCase:
    pattern: str
    seconds: float  # the longest until the app hears something (answer or error)
    calls: int  # upstream calls made for the request in that time
    note: str


def _backoff_steps(cfg: UpstreamConfig) -> list[float]:
    """Upper bounds of the waits between attempts after failures that name no wait."""
    r = cfg.retry
    return [min(r.max_delay, r.base_delay * 2**k) for k in range(r.max_attempts - 1)]


def _rate_limit_steps(cfg: UpstreamConfig) -> list[float]:
    r = cfg.retry
    return [
        min(r.rate_limit_max_delay, r.rate_limit_base_delay * 2**k * RATE_LIMIT_JITTER)
        for k in range(r.max_attempts - 1)
    ]


def _calls_within(limit: float, attempt_seconds: float, waits: list[float]) -> tuple[float, int]:
    """(time, calls) for attempts that each take ``attempt_seconds`` then wait, until the
    attempts or ``limit`` run out."""
    t, calls = 0.0, 0
    for i in range(len(waits) + 1):
        if t >= limit:
            break
        calls += 1
        t += attempt_seconds
        if i < len(waits):
            t += waits[i]
    return min(t, limit), calls


def worst_cases(config: Config) -> list[WorstCase]:
    """Per failure pattern, for requests whose first upstream is the config's first one."""
    primary = config.upstreams[0]
    others = len(config.upstreams) - 1
    s = primary.stream
    limit = min(s.answer_start_timeout, s.total_timeout)
    hedge = primary.routing.hedge_after
    hedges = min(primary.routing.max_hedges, others) if hedge else 0
    out: list[WorstCase] = []

    seconds, calls = _calls_within(limit, s.first_token_timeout, _backoff_steps(primary))
    out.append(
        WorstCase(
            "silent upstream (no first event), every upstream",
            seconds,
            min(primary.retry.max_attempts, calls + hedges),
            f"each attempt waits first_token_timeout ({s.first_token_timeout:g}s); "
            f"answer_start_timeout ({s.answer_start_timeout:g}s) ends it with a 504",
        )
    )
    if others:
        if hedge:
            out.append(
                WorstCase(
                    "silent or slow first upstream, healthy fallback",
                    min(limit, hedge),
                    2,
                    f"plus the fallback's own time to first token: the hedge starts after "
                    f"routing.hedge_after ({hedge:g}s)",
                )
            )
        else:
            out.append(
                WorstCase(
                    "silent first upstream, healthy fallback",
                    min(limit, s.first_token_timeout),
                    2,
                    "plus the fallback's time to first token: a first-token timeout fails "
                    "over at once (hedging is off)",
                )
            )
    out.append(
        WorstCase(
            "slow first token (t seconds), one upstream",
            min(limit, s.first_token_timeout),
            1,
            f"t itself while t < first_token_timeout ({s.first_token_timeout:g}s)",
        )
    )
    seconds, calls = _calls_within(limit, 0.0, _rate_limit_steps(primary))
    out.append(
        WorstCase(
            "persistent 429 without Retry-After",
            seconds,
            calls,
            f"paced from retry.rate_limit_base_delay ({primary.retry.rate_limit_base_delay:g}s),"
            " doubling, shared by every request to the upstream; then the 429 goes back",
        )
    )
    seconds, calls = _calls_within(limit, 0.0, _backoff_steps(primary))
    out.append(
        WorstCase(
            "persistent 5xx",
            seconds,
            calls,
            "backoff between attempts (full jitter: at most the figure); then the error goes "
            "back (and the breaker opens for every request)",
        )
    )
    out.append(
        WorstCase(
            "a stream that keeps streaming",
            s.total_timeout,
            primary.retry.max_attempts,
            "stream.total_timeout bounds the whole request, answer included",
        )
    )
    return out


def describe(config: Config) -> str:
    lines = ["worst cases (seconds until the app hears something, upstream calls):"]
    for case in worst_cases(config):
        lines.append(
            f"  {case.pattern}: {math.ceil(case.seconds * 10) / 10:g}s, "
            f"{case.calls} call{'s' if case.calls != 1 else ''} ({case.note})"
        )
    return "\n".join(lines)
