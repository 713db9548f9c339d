"""INTACT_* environment variables: intact's own settings, and Kubernetes' service links."""

from __future__ import annotations

import pytest

from intact.config import ConfigError, env_overrides


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    environ = {
        "INTACT_SERVICE_HOST": "10.0.0.7",
        "INTACT_SERVICE_PORT": "9464",
        "INTACT_SERVICE_PORT_METRICS": "9464",
        "INTACT_PORT": "tcp://10.0.0.7:9464",
        "INTACT_PORT_9464_TCP_ADDR": "10.0.0.7",
        "INTACT_SOCKET": "/run/intact/intact.sock",
        "INTACT_STREAM__STALL_TIMEOUT": "5",
    }
    overlay, shortcuts = env_overrides(environ)
    assert overlay == {"stream": {"stall_timeout": 5.0}}
    assert shortcuts == {"socket": "/run/intact/intact.sock"}


def test_an_unknown_intact_variable_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="INTACT_STREAM_STALL_TIMEOUT"):
        env_overrides({"INTACT_STREAM_STALL_TIMEOUT": "5"})
