"""Which fault the chaos proxy injects into one request, and where.

A request's fault comes from, in order: its `x-chaos-fault` header, the proxy's FIFO script
(`POST /chaos/faults`), or a seeded draw. The draw is keyed on the seed, the request's path and
body and how many times that exact request was seen before, so a run replays the same faults
whatever order concurrent requests arrive in, while a retry of the same body (which must not
meet the same fault forever) gets a fresh draw.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from intact.simulator.faults import (
    AFTER_FINISH,
    ALL_FAULT_KINDS,
    MID_STREAM_KINDS,
    NO_FAULT,
    FaultSpec,
    parse_fault_spec,
)

FAULT_HEADER = "x-chaos-fault"

LAST_CHUNK = sys.maxsize
"""A position past any stream: the fault strikes before the finish chunk ("last")."""

# Requests seen per distinct (path, body); older entries are forgotten beyond this, which only
# restarts the occurrence count of a body not seen for that many distinct requests.
MAX_TRACKED_BODIES = 65_536
MAX_SCRIPTED = 100_000
"""Scripted faults waiting at once (the script comes from a client over HTTP)."""

Source = Literal["header", "script", "random"]


@dataclass(frozen=True)
class ChaosDecision:
    """One request's fate: a fault kind (or "none") and, for mid-stream kinds, its position.

    `position` counts the content chunks (role, content and tool-call chunks; not the finish,
    usage or [DONE] events) forwarded before the fault; LAST_CHUNK means all of them,
    AFTER_FINISH after the finish chunk. On Messages and Responses streams it counts SSE
    events instead: every event before message_delta, or before response.completed
    (`frames.EventRole`). A position past the stream's end is clamped to LAST_CHUNK, since a
    proxy cannot know a stream's length in advance.
    """

    kind: str
    position: int | None
    source: Source

    @property
    def is_fault(self) -> bool:
        return self.kind != NO_FAULT

    @property
    def mid_stream(self) -> bool:
        return self.kind in MID_STREAM_KINDS

    @property
    def planned(self) -> str:
        """The decision as a fault spec ("reset@7", "stall@last", "http_429", "none")."""
        if self.position is None:
            return self.kind
        if self.position == LAST_CHUNK:
            return f"{self.kind}@last"
        if self.position == AFTER_FINISH:
            return f"{self.kind}@done"
        return f"{self.kind}@{self.position}"


def parse_chaos_spec(spec: str) -> FaultSpec:
    """A simulator fault spec the proxy can place: "kind", "kind@N", "@last" or "@done".

    Raises ValueError naming the spec; "mid" is refused because a proxy only learns a stream's
    length when it ends.
    """
    parsed = parse_fault_spec(spec)
    if parsed.position == "mid":
        raise ValueError(
            f"fault spec {spec!r}: the chaos proxy cannot find the middle of a stream it has "
            "not seen yet; use a chunk count, 'last' or 'done'"
        )
    return parsed


@dataclass(frozen=True, kw_only=True)
class FaultOdds:
    """Random injection: how often, which kinds, and how far into a stream."""

    fault_rate: float = 0.0
    kinds: tuple[str, ...] = ALL_FAULT_KINDS
    max_position: int = 64
    """Mid-stream faults strike after 0..max_position content chunks (clamped to the last)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {self.fault_rate!r}")
        unknown = [kind for kind in self.kinds if kind not in ALL_FAULT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown fault kinds {unknown}; allowed: {', '.join(ALL_FAULT_KINDS)}"
            )
        if not self.kinds:
            raise ValueError("kinds must name at least one fault kind")
        if self.max_position < 0:
            raise ValueError(f"max_position must be >= 0, got {self.max_position!r}")


class FaultPlanner:
    """Decides each faultable request's fault: header, then script, then seeded chance."""

    def __init__(self, odds: FaultOdds, *, seed: int) -> None:
        self.odds = odds
        self.seed = seed
        self._script: deque[FaultSpec] = deque()
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(str(spec) for spec in self._script)

    def schedule(self, specs: Sequence[str]) -> None:
        """Append scripted faults, one per coming request; all or nothing (ValueError)."""
        parsed = [parse_chaos_spec(spec) for spec in specs]
        if len(self._script) + len(parsed) > MAX_SCRIPTED:
            raise ValueError(f"the fault script holds at most {MAX_SCRIPTED} faults")
        self._script.extend(parsed)

    def clear(self) -> None:
        self._script.clear()

    def decide(self, *, path: str, body: bytes, header: str | None) -> ChaosDecision:
        """The fault for the request arriving now; ValueError for a malformed header."""
        rng = random.Random(self._draw_key(path, body))
        # The same three draws for every request, whatever decides it, so that a scripted or
        # header-driven request does not shift the random decisions of the others.
        roll = rng.random()
        kind = self.odds.kinds[rng.randrange(len(self.odds.kinds))]
        position = rng.randint(0, self.odds.max_position)
        if header is not None:
            return _from_spec(parse_chaos_spec(header), "header", position)
        if self._script:
            return _from_spec(self._script.popleft(), "script", position)
        if roll >= self.odds.fault_rate:
            return ChaosDecision(NO_FAULT, None, "random")
        return ChaosDecision(kind, position if kind in MID_STREAM_KINDS else None, "random")

    def _draw_key(self, path: str, body: bytes) -> int:
        request = hashlib.sha256(path.encode() + b"\0" + body).digest()
        occurrence = self._seen.pop(request, 0)
        self._seen[request] = occurrence + 1
        if len(self._seen) > MAX_TRACKED_BODIES:
            self._seen.popitem(last=False)
        key = hashlib.sha256(b"%d\0%d\0" % (self.seed, occurrence) + request).digest()
        return int.from_bytes(key[:8], "big")


def _from_spec(spec: FaultSpec, source: Source, drawn_position: int) -> ChaosDecision:
    if spec.kind not in MID_STREAM_KINDS:
        return ChaosDecision(spec.kind, None, source)
    if spec.position is None:
        return ChaosDecision(spec.kind, drawn_position, source)
    if spec.position == "last":
        return ChaosDecision(spec.kind, LAST_CHUNK, source)
    if spec.position == "done":
        return ChaosDecision(spec.kind, AFTER_FINISH, source)
    assert isinstance(spec.position, int)
    return ChaosDecision(spec.kind, spec.position, source)
