"""Telemetry: traces (OpenTelemetry GenAI conventions), metrics, JSON logs; wired once at start."""
