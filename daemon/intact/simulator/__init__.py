"""The simulated upstream: an OpenAI-compatible fake LLM server that fails on purpose.

`intact demo`, the tests, the chaos run and the benchmarks use it in place of a real
provider: answers are deterministic (`expected_answer`), faults are named and seedable.
"""

from intact.simulator.faults import ALL_FAULT_KINDS, FaultSpec, parse_fault_spec
from intact.simulator.server import (
    SimulatedUpstream,
    SimulatorSettings,
    SimulatorStats,
    serve_forever,
)
from intact.simulator.text import ExpectedAnswer, expected_answer

__all__ = [
    "ALL_FAULT_KINDS",
    "ExpectedAnswer",
    "FaultSpec",
    "SimulatedUpstream",
    "SimulatorSettings",
    "SimulatorStats",
    "expected_answer",
    "parse_fault_spec",
    "serve_forever",
]
