"""Resilience primitives, one concern per module, each testable without a network.

``backoff`` (how long to wait), ``retry_after`` (how long the provider asked us to wait),
``breaker`` (whether an upstream may be called at all), ``budget`` (whether a retry is
affordable) and ``bulkhead`` (how many attempts may run at once).
"""
