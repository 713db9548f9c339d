"""Which fault (if any) the simulated upstream injects into a request, and where.

Faults come from a FIFO script first (one entry per chat request, so a test can say "the
first attempt resets after 3 chunks, the resume stalls before its first") and, once the
script is empty, from seeded random injection, so a chaos run can be replayed exactly.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RESET = "reset"
STALL = "stall"
ERROR_EVENT = "error_event"
TRUNCATE = "truncate"
HTTP_429 = "http_429"
HTTP_500 = "http_500"
HTTP_503 = "http_503"
HTTP_529 = "http_529"
CONNECT_DROP = "connect_drop"
HTTP_400 = "http_400"
CONTEXT_LENGTH = "context_length"
NO_FAULT = "none"

MID_STREAM_KINDS: tuple[str, ...] = (RESET, STALL, ERROR_EVENT, TRUNCATE)
"""Faults that strike after some chunks of a stream were sent."""

BEFORE_RESPONSE_KINDS: tuple[str, ...] = (HTTP_429, HTTP_500, HTTP_503, CONNECT_DROP)
"""Faults that replace the response entirely."""

ALL_FAULT_KINDS: tuple[str, ...] = MID_STREAM_KINDS + BEFORE_RESPONSE_KINDS
"""The transient failures random injection draws from."""

OPT_IN_KINDS: tuple[str, ...] = (HTTP_529,)
"""Transient failures random injection draws only when named in the simulator's `kinds`:
http_529 is Anthropic's "overloaded" status (every endpoint answers it with a 529; on
/v1/messages http_503 becomes a 529 too, as Anthropic never sends 503)."""

SCRIPTED_ONLY_KINDS: tuple[str, ...] = (HTTP_400, CONTEXT_LENGTH)
"""Final (non-retryable) refusals, e.g. a provider that rejects assistant prefill with 400,
or a prompt longer than the model's context (400 context_length_exceeded); only ever
injected by a script, never at random."""

Position = int | Literal["mid", "last", "done"]

AFTER_FINISH = -1
"""`chunks_before` of a fault that strikes after the finish chunk, before usage and [DONE]."""


@dataclass(frozen=True)
class FaultSpec:
    """One scripted fault: a kind and, for mid-stream kinds, where it strikes.

    `position` counts the chunks (role and content/tool chunks, not the finish or usage
    chunk) sent before the fault; "last" means every content chunk but not the finish chunk,
    "mid" half of them; None means drawn at random when the request arrives. On
    /v1/messages and /v1/responses the chunks are the SSE events before the closing ones
    (see `simulator.anthropic_api` and `simulator.responses_api`).
    """

    kind: str
    position: Position | None = None

    def chunks_before(self, total: int, rng: random.Random) -> int:
        """The fault's position in a stream of `total` chunks, clamped to "last"."""
        if self.position == "done":
            return AFTER_FINISH
        if self.position == "last":
            return total
        if self.position == "mid":
            return total // 2
        if self.position is None:
            return rng.randint(0, total)
        return min(self.position, total)

    def __str__(self) -> str:
        return self.kind if self.position is None else f"{self.kind}@{self.position}"


def parse_fault_spec(spec: str) -> FaultSpec:
    """Parse "kind" or "kind@position" (position: an int >= 0, "mid", "last" or "done").

    Raises ValueError naming the bad spec and what is allowed.
    """
    kind, _, where = spec.strip().partition("@")
    known = (*ALL_FAULT_KINDS, *OPT_IN_KINDS, *SCRIPTED_ONLY_KINDS, NO_FAULT)
    allowed = ", ".join(known)
    if kind not in known:
        raise ValueError(f"unknown fault kind {kind!r} in fault spec {spec!r}; allowed: {allowed}")
    if not where:
        if "@" in spec:
            raise ValueError(f"fault spec {spec!r} has an empty position after '@'")
        return FaultSpec(kind)
    if kind not in MID_STREAM_KINDS:
        raise ValueError(
            f"fault spec {spec!r}: {kind} happens before any response, so it takes no "
            f"position; positions apply to {', '.join(MID_STREAM_KINDS)}"
        )
    if where == "mid":
        return FaultSpec(kind, "mid")
    if where == "last":
        return FaultSpec(kind, "last")
    if where == "done":
        return FaultSpec(kind, "done")
    if where.isdigit():
        return FaultSpec(kind, int(where))
    raise ValueError(
        f"fault spec {spec!r}: position {where!r} must be a chunk count >= 0, 'mid', 'last' "
        "or 'done' (after the finish chunk)"
    )


class FaultInjector:
    """Decides each chat request's fault: scripted entries first, then seeded chance."""

    def __init__(
        self,
        *,
        fault_rate: float,
        continuation_fault_rate: float | None,
        kinds: Sequence[str],
        rng: random.Random,
    ) -> None:
        self._fault_rate = fault_rate
        self._continuation_fault_rate = (
            fault_rate if continuation_fault_rate is None else continuation_fault_rate
        )
        self._kinds = tuple(kinds)
        self._rng = rng
        self._script: deque[FaultSpec] = deque()

    @property
    def pending(self) -> tuple[FaultSpec, ...]:
        return tuple(self._script)

    def schedule(self, specs: Sequence[FaultSpec]) -> None:
        self._script.extend(specs)

    def clear(self) -> None:
        self._script.clear()

    def next_fault(self, *, continuation: bool, total_chunks: int) -> InjectedFault | None:
        """The fault for the request arriving now (None: serve it cleanly).

        `total_chunks` is how many chunks its stream would have before the finish chunk.
        Random injection makes the same three draws for every request, whatever their
        outcome, so one seed replays a whole run.
        """
        if self._script:
            spec = self._script.popleft()
            if spec.kind == NO_FAULT:
                return None
            return InjectedFault(spec.kind, spec.chunks_before(total_chunks, self._rng))
        rate = self._continuation_fault_rate if continuation else self._fault_rate
        roll = self._rng.random()
        kind = self._kinds[self._rng.randrange(len(self._kinds))] if self._kinds else None
        position = self._rng.randint(0, total_chunks)
        if kind is None or roll >= rate:
            return None
        return InjectedFault(kind, position)


@dataclass(frozen=True)
class InjectedFault:
    """A fault decided for one request: its kind and how many chunks precede it."""

    kind: str
    chunks_before: int

    def __str__(self) -> str:
        if self.kind in MID_STREAM_KINDS:
            return f"{self.kind}@{self.chunks_before}"
        return self.kind
