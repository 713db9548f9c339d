"""Telemetry: traces (OpenTelemetry GenAI conventions), metrics, JSON logs; wired once at start.

- ``api``      the narrow interface the relay records facts through (and ``NoTelemetry``)
- ``otel``     the OpenTelemetry-backed implementation of that interface
- ``metrics``  every instrument name, unit, bucket set and label set (a contract)
- ``semconv``  span and metric attribute keys
- ``tracing``  span names, the tracer provider, W3C propagation
- ``logs``     structlog configuration (JSON lines with trace ids)
- ``export``   /metrics (Prometheus) and OTLP destinations
- ``runtime``  ``start_telemetry``: builds all of the above; bounded shutdown
"""
