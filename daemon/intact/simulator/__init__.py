"""The simulated upstream: an OpenAI-compatible fake LLM server that fails on purpose.

`intact demo`, the tests, the chaos run and the benchmarks use it in place of a real
provider: answers are deterministic (`expected_answer`), in the style the request picks by
model name suffix (`sim-1:code`: prose, code, table, cjk, json, mixed; `:reasoning`,
`:refusal`), cut into tokens like a BPE tokenizer, and continued the way real models
continue; faults are named and seedable. Besides chat completions it speaks Anthropic's
/v1/messages (`expected_message`) and OpenAI's /v1/responses (`expected_response`).
"""

from intact.simulator.anthropic_api import ExpectedMessage, expected_message
from intact.simulator.faults import ALL_FAULT_KINDS, FaultSpec, parse_fault_spec
from intact.simulator.responses_api import ExpectedResponse, expected_response
from intact.simulator.server import (
    SimulatedUpstream,
    SimulatorSettings,
    SimulatorStats,
    expected_for_request,
    serve_forever,
)
from intact.simulator.styles import TEXT_STYLES
from intact.simulator.text import STYLES, ExpectedAnswer, Variant, expected_answer

__all__ = [
    "ALL_FAULT_KINDS",
    "STYLES",
    "TEXT_STYLES",
    "ExpectedAnswer",
    "ExpectedMessage",
    "ExpectedResponse",
    "FaultSpec",
    "SimulatedUpstream",
    "SimulatorSettings",
    "SimulatorStats",
    "Variant",
    "expected_answer",
    "expected_for_request",
    "expected_message",
    "expected_response",
    "parse_fault_spec",
    "serve_forever",
]
