"""Everything intact keeps per upstream for the daemon's life: the HTTP client and the
resilience state (breaker, retry budget, concurrency bound, backoff policy)."""

from __future__ import annotations

from dataclasses import dataclass

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import DEFAULT_APIS_BY_KIND, UpstreamConfig
from intact.resilience.backoff import BackoffPolicy
from intact.resilience.breaker import CircuitBreaker
from intact.resilience.budget import RetryBudget
from intact.resilience.bulkhead import Bulkhead
from intact.resilience.rate_limit import RateLimitGate
from intact.telemetry.api import Telemetry
from intact.upstream.client import UpstreamClient


@dataclass(eq=False)
class UpstreamRuntime:
    """One configured upstream at run time."""

    config: UpstreamConfig
    client: UpstreamClient
    breaker: CircuitBreaker
    budget: RetryBudget
    bulkhead: Bulkhead
    backoff: BackoffPolicy
    rate_limit: RateLimitGate

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_retry_after(self) -> float:
        return self.config.retry.max_retry_after

    def serves(self, model: str) -> bool:
        return not self.config.models or model in self.config.models

    def serves_api(self, api: str) -> bool:
        """Whether app requests of ``api`` (chat, responses, messages) may come here."""
        config = self.config
        return api in (config.apis or DEFAULT_APIS_BY_KIND[config.kind])

    @classmethod
    def build(
        cls,
        config: UpstreamConfig,
        telemetry: Telemetry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        environ: dict[str, str] | None = None,
    ) -> UpstreamRuntime:
        return cls(
            config=config,
            client=UpstreamClient(config, environ=environ),
            breaker=CircuitBreaker(
                config.name, config.breaker, clock=clock, on_transition=telemetry.breaker_transition
            ),
            budget=RetryBudget.from_config(config.retry, clock=clock),
            bulkhead=Bulkhead.from_config(config),
            backoff=BackoffPolicy.from_config(config.retry),
            rate_limit=RateLimitGate.from_config(config.retry),
        )


@dataclass(frozen=True, eq=False)
class Target:
    """Where one attempt goes: an upstream, and the model name it is asked for (a route may
    rewrite the app's model, e.g. to another provider's name for a fallback)."""

    upstream: UpstreamRuntime
    model: str
    requested: str  # the model the app asked for

    @property
    def name(self) -> str:
        """Unique per (upstream, model): failover counts attempts per target."""
        up = self.upstream.name
        return up if self.model == self.requested else f"{up}:{self.model}"

    @property
    def breaker(self) -> CircuitBreaker:
        return self.upstream.breaker

    @property
    def backoff(self) -> BackoffPolicy:
        return self.upstream.backoff

    @property
    def rate_limit(self) -> RateLimitGate:
        return self.upstream.rate_limit

    @property
    def max_retry_after(self) -> float:
        return self.upstream.config.retry.max_retry_after
