"""Structured logs: one JSON object per line (or a console view on a terminal), with trace ids.

Every line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and ``event``, plus
``trace_id``/``span_id`` of the span current where it was logged, so a log line leads to its
trace. Standard-library loggers (the OpenTelemetry exporters, aiohttp) are routed through
the same pipeline, so the daemon writes one format only.

Prompts and completions are never logged unless ``telemetry.log_content`` is set (the
relay then writes one ``request_content`` line per request).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from intact.config import TelemetryConfig

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
DEFAULT_LOGGER_NAME: Final = "intact"


def add_trace_ids(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Add the current span's ``trace_id``/``span_id`` (W3C hex) when there is one."""
    if "trace_id" not in event_dict:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


class NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows the name it was asked for (``structlog.get_logger(name)``)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedPrintLogger:
        name = args[0] if args and isinstance(args[0], str) else DEFAULT_LOGGER_NAME
        return NamedPrintLogger(self._file, name)


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Marks the root handler this module installed, so configuring again replaces it.
_HANDLER_NAME: Final = "intact-structlog"


def configure_logging(config: TelemetryConfig, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard-library root logger; safe to call again."""
    out = stream if stream is not None else sys.stdout
    level = LEVELS[config.log_level]
    console = config.log_format == "console" or (config.log_format == "auto" and _is_terminal(out))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_trace_ids,
    ]
    rendering: list[Processor]
    if console:
        rendering = [structlog.dev.ConsoleRenderer(colors=_is_terminal(out))]
    else:
        rendering = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=NamedPrintLoggerFactory(out),
        # Not cached: the relay's module-level loggers must follow a later reconfiguration
        # (tests build several runtimes); logging happens at request boundaries only.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
