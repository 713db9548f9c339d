"""Upstream timeouts without a timer per chunk, and only while intact waits for the upstream.

A stream is abandoned when its first event does not arrive within ``first_token_timeout``
(or by ``first_deadline``, the app's answer-start deadline), when the upstream goes silent
for ``stall_timeout`` after that, or when the request's deadline passes. The clocks run only
while the reader is *armed*, i.e. awaiting the upstream: time the relay spends elsewhere
(waiting for a slow app to take its bytes) is never upstream silence. Silence is the time
since the last *event*: SSE comments and keep-alives keep a connection open but are not
progress, so an upstream that only pings mid-stream is a stall.

Re-arming a timer on every read would allocate a timer handle per token; instead each read
stores the loop time and one timer re-arms itself lazily when it fires early. On expiry the
reading task is cancelled, and the reader turns that cancellation into an UpstreamFailure
with ``failure()`` (the same dance as ``asyncio.timeout``, so an outside cancellation such as
the app going away still propagates as CancelledError).
"""

from __future__ import annotations

import asyncio

from intact.resilience import classify
from intact.resilience.classify import FailureKind, UpstreamFailure


class Watchdog:
    """Cancels the reading task when its upstream is silent for too long."""

    __slots__ = (
        "_armed",
        "_cancelling",
        "_deadline",
        "_disarmed_at",
        "_first",
        "_first_deadline",
        "_got_first",
        "_handle",
        "_last",
        "_loop",
        "_stall",
        "_start",
        "_task",
        "expired",
    )

    def __init__(
        self,
        *,
        first_token: float,
        stall: float,
        deadline: float,
        first_deadline: float | None = None,
    ) -> None:
        """Deadlines are absolute, on the event loop's clock; ``first_deadline`` applies
        only until the first event."""
        self._loop = asyncio.get_running_loop()
        self._first = first_token
        self._stall = stall
        self._deadline = deadline
        self._first_deadline = deadline if first_deadline is None else min(deadline, first_deadline)
        self._start = self._last = self._loop.time()
        self._got_first = False
        self._armed = False
        self._disarmed_at: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.expired: FailureKind | None = None

    def _due(self) -> tuple[float, FailureKind]:
        if self._got_first:
            due, kind = self._last + self._stall, FailureKind.STALL
            deadline = self._deadline
        else:
            due, kind = self._start + self._first, FailureKind.FIRST_TOKEN_TIMEOUT
            deadline = self._first_deadline
        if deadline <= due:
            return deadline, FailureKind.DEADLINE
        return due, kind

    def arm(self) -> None:
        """The reader is about to await the upstream: its silence counts from now."""
        task = self._task
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Watchdog must be used inside a task")
            self._task = task
        self._cancelling = task.cancelling()
        self._armed = True
        if self._disarmed_at is not None:
            # Time spent away from the upstream (e.g. waiting for a slow app) is not silence.
            self._last += self._loop.time() - self._disarmed_at
            self._disarmed_at = None
        if self._handle is None:
            self._handle = self._loop.call_at(self._due()[0], self._fire)

    def disarm(self) -> None:
        """The await returned: the relay is busy with what the upstream sent."""
        self._armed = False
        self._disarmed_at = self._loop.time()

    def progress(self) -> None:
        """An event arrived (comments and keep-alives do not count)."""
        self._last = self._loop.time()

    def first_event(self) -> None:
        """From now on silence is measured from the last event (stall_timeout), which may be
        due sooner than the first-token deadline the timer is armed for."""
        self._got_first = True
        self._last = self._loop.time()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        if not self._armed:
            self._handle = None  # re-armed by the next arm()
            return
        due, kind = self._due()
        if self._loop.time() + 0.0005 < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._handle = None
        self.expired = kind
        assert self._task is not None
        self._task.cancel()

    def limit(self) -> float:
        kind = self.expired
        if kind is FailureKind.STALL:
            return self._stall
        if kind is FailureKind.FIRST_TOKEN_TIMEOUT:
            return self._first
        deadline = self._deadline if self._got_first else self._first_deadline
        return deadline - self._start

    def failure(self) -> UpstreamFailure | None:
        """After a CancelledError while armed: the timeout it stands for, if it was ours
        alone (None means somebody else cancelled the task too: let it propagate)."""
        if self.expired is None or self._task is None:
            return None
        if self._task.uncancel() > self._cancelling:
            return None
        return classify.timeout_failure(self.expired, self.limit())

    def close(self) -> None:
        self._armed = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
