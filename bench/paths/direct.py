"""The app talks to the simulated upstream itself: the reference every relay is held to."""

from __future__ import annotations

from paths import Target


class Direct:
    name = "direct"
    pid: int | None = None
    note = "client to upstream over TCP loopback"

    def __init__(self) -> None:
        self._upstream = ""

    def start(self, upstream: str) -> None:
        self._upstream = upstream

    def target(self) -> Target:
        return Target(self._upstream + "/v1/chat/completions")

    def stop(self) -> None:
        return None
