"""The chaos proxy: the simulator's named faults in front of any OpenAI-compatible server,
in chat completions, Anthropic Messages and OpenAI Responses streams.

`plan` decides each request's fault (header, script or seeded chance), `frames` cuts an event
stream into raw events, `proxy` is the aiohttp server that forwards and strikes.
"""

from intact.chaos.plan import FAULT_HEADER, ChaosDecision, FaultOdds, FaultPlanner
from intact.chaos.proxy import ChaosProxy, ChaosSettings, ChaosStats, serve_until_signalled

__all__ = [
    "FAULT_HEADER",
    "ChaosDecision",
    "ChaosProxy",
    "ChaosSettings",
    "ChaosStats",
    "FaultOdds",
    "FaultPlanner",
    "serve_until_signalled",
]
