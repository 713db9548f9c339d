"""Logs: JSON lines that carry the trace id of their request; no prompt or completion text."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.trace import SpanKind

from intact.config import build_config
from intact.simulator import SimulatedUpstream, expected_answer
from intact.telemetry.logs import configure_logging
from telemetry.helpers import MESSAGES, app_client, daemon_config, serving, stream_chat

pytestmark = pytest.mark.timeout(15)


def ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


async def test_request_lines_carry_the_trace_id_of_their_request(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url)
    sinks = start_sinks(cfg)
    sim.schedule_faults(["reset@5", "none"])
    async with serving(cfg, sinks) as d:
        assert (await stream_chat(app_client(d.socket_path))).error is None

    raw = sinks.log_stream.getvalue().splitlines()
    lines = [json.loads(line) for line in raw]  # every line is one JSON object
    server = next(s for s in sinks.finished_spans() if s.kind is SpanKind.SERVER)
    first_attempt = next(s for s in sinks.finished_spans()
                         if s.attributes and s.attributes.get("intact.attempt") == 1)  # fmt: skip

    [done] = [line for line in lines if line["event"] == "request_done"]
    assert (done["trace_id"], done["span_id"]) == ids(server)
    assert done["level"] == "info"
    assert done["logger"] == "intact.telemetry"
    assert done["timestamp"].endswith("Z")
    assert {k: done[k] for k in ("outcome", "model", "upstream", "attempts", "resumes",
                                 "interruptions", "status", "error_code")} == {
        "outcome": "recovered", "model": "sim-1", "upstream": "sim", "attempts": 2,
        "resumes": 1, "interruptions": ["reset"], "status": 200, "error_code": None,
    }  # fmt: skip
    assert done["completion_tokens"] > done["recovered_tokens"] > 0
    assert done["duration_ms"] > 0

    # The relay's own warning, logged inside the attempt, names that attempt's span.
    [interrupted] = [line for line in lines if line["event"] == "upstream_interrupted"]
    assert (interrupted["trace_id"], interrupted["span_id"]) == ids(first_attempt)
    assert interrupted["level"] == "warning"
    assert interrupted["logger"] == "intact.relay"

    # Neither the prompt nor the answer is ever written.
    text = "\n".join(raw)
    assert MESSAGES[0]["content"] not in text
    answer = expected_answer(MESSAGES).content or ""
    assert all(answer[i : i + 24] not in text for i in range(0, len(answer) - 24, 12))


async def test_a_lost_stream_is_logged_as_an_error_with_its_trace_id(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url, retry={"max_attempts": 2})
    sinks = start_sinks(cfg)
    sim.schedule_faults(["reset@5", "reset@2"])  # the one resume breaks too
    async with serving(cfg, sinks) as d:
        got = await stream_chat(app_client(d.socket_path))
    assert got.error is not None  # told in-band, after part of the answer
    server = next(s for s in sinks.finished_spans() if s.kind is SpanKind.SERVER)
    lines = sinks.log_lines()
    [lost] = [line for line in lines if line["event"] == "stream_lost"]
    [done] = [line for line in lines if line["event"] == "request_done"]
    assert lost["level"] == "error"
    assert lost["trace_id"] == done["trace_id"] == ids(server)[0]
    assert done["level"] == "warning"
    assert done["outcome"] == "failed"
    assert done["error_code"] == "attempts_exhausted"


def test_console_format_writes_readable_lines() -> None:
    stream = io.StringIO()
    configure_logging(build_config({"telemetry": {"log_format": "console"}}).telemetry, stream)
    structlog.get_logger("intact.test").warning("breaker_opened", upstream="primary")
    out = stream.getvalue()
    assert "breaker_opened" in out
    assert "upstream=primary" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_log_level_filters_lower_levels() -> None:
    stream = io.StringIO()
    cfg = build_config({"telemetry": {"log_format": "json", "log_level": "warning"}})
    configure_logging(cfg.telemetry, stream)
    log = structlog.get_logger("intact.test")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_standard_library_loggers_share_the_json_format() -> None:
    stream = io.StringIO()
    configure_logging(build_config({"telemetry": {"log_format": "json"}}).telemetry, stream)
    logging.getLogger("opentelemetry.exporter.test").warning("collector %s unreachable", "x")
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert line["event"] == "collector x unreachable"
    assert line["logger"] == "opentelemetry.exporter.test"
    assert line["level"] == "warning"


async def test_log_content_opt_in_logs_the_prompt_and_the_delivered_text(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url, telemetry={"log_content": True})
    sinks = start_sinks(cfg)
    sim.schedule_faults(["reset@5"])
    async with serving(cfg, sinks) as d:
        assert (await stream_chat(app_client(d.socket_path))).error is None
    [content] = [line for line in sinks.log_lines() if line["event"] == "request_content"]
    assert content["messages"] == MESSAGES
    assert content["completion"] == expected_answer(MESSAGES).content
    assert content["trace_id"]
