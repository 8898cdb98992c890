"""Heartbeat timing: when the next heartbeat is due, when the session must be presumed lost,
and (:class:`PollTimer`) when the application stopped asking for records.

Pure bookkeeping over an injectable monotonic clock (seconds), like kafka-python's
``coordinator/heartbeat.py``: no I/O, no threads. The server decides expiry with its own
``TIME``; this only lets a member stop *before* the server can have evicted it.

Safety rule: the server stamps a heartbeat when the script runs, which is after the client
sent it, so ``last successful send + session timeout`` is never later than the server's
deadline. A member past that local deadline must stop reading and acknowledging.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class Heartbeat:
    """Tracks one member's heartbeat schedule. Not thread-safe: guard it with the caller's lock."""

    def __init__(
        self,
        interval_ms: int,
        session_timeout_ms: int,
        *,
        clock: Clock = time.monotonic,
        retry_backoff_ms: int = 100,
    ) -> None:
        self.clock = clock
        self.interval = interval_ms / 1000
        self.session_timeout = session_timeout_ms / 1000
        self.retry_backoff = retry_backoff_ms / 1000
        self.last_send = float("-inf")
        self.last_success_send = float("-inf")
        self.last_failure = float("-inf")
        self._inflight_send: float | None = None

    def update(self, interval_ms: int, session_timeout_ms: int) -> None:
        """Adopt the group's stored timing (the server's settings win over local ones)."""
        self.interval = interval_ms / 1000
        self.session_timeout = session_timeout_ms / 1000

    def reset(self) -> None:
        """Start a fresh session (after a successful join): the session counts from now."""
        now = self.clock()
        self.last_send = now
        self.last_success_send = now
        self.last_failure = float("-inf")
        self._inflight_send = None

    def sent(self) -> None:
        """A heartbeat is being sent now."""
        self.last_send = self.clock()
        self._inflight_send = self.last_send

    def succeeded(self) -> None:
        """The server answered the heartbeat sent last."""
        if self._inflight_send is not None:
            self.last_success_send = self._inflight_send
        self._inflight_send = None

    def failed(self) -> None:
        """The heartbeat sent last got no answer (connection error, timeout)."""
        self.last_failure = self.clock()
        self._inflight_send = None

    def time_to_next(self) -> float:
        """Seconds until the next heartbeat is due (0 if due now)."""
        now = self.clock()
        if self.last_failure > self.last_success_send:
            due = self.last_failure + self.retry_backoff
        else:
            due = self.last_send + self.interval
        return max(0.0, due - now)

    def should_send(self) -> bool:
        """Whether a heartbeat is due now."""
        return self.time_to_next() <= 1e-6  # float sums of intervals land a hair short

    def session_deadline(self) -> float:
        """Clock time after which the server may have evicted this member."""
        return self.last_success_send + self.session_timeout

    def session_expired(self, margin: float = 0.0) -> bool:
        """True once the session may be lost (``margin`` seconds early): stop reading."""
        return self.clock() >= self.session_deadline() - margin


class PollTimer:
    """When the application last asked for records, and whether it has been away too long.

    Kafka's ``max.poll.interval.ms``: the heartbeat thread proves the *process* is alive, this
    proves the *application* still consumes. Each request for records (a ``poll()``, an
    iteration step, a ``commit()``) is bracketed by :meth:`begin` and :meth:`end`; time spent
    inside one (waiting for data) never counts, so a long ``poll(timeout)`` on a quiet topic is
    not mistaken for a stuck handler. The interval runs from the end of the last request.
    Not thread-safe: guard it with the caller's lock.
    """

    def __init__(self, max_interval_ms: int, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.max_interval_ms = max_interval_ms
        self.max_interval = max_interval_ms / 1000
        self.last_poll = clock()
        self.active = 0  # requests in progress (several threads may poll one consumer shell)

    def begin(self) -> None:
        """A request for records starts: the interval stops running."""
        self.active += 1
        self.last_poll = self.clock()

    def end(self) -> None:
        """A request for records returned: the interval starts again from now."""
        self.active = max(0, self.active - 1)
        self.last_poll = self.clock()

    def reset(self) -> None:
        """The application is back after the interval expired: start it again from now."""
        self.active = 0
        self.last_poll = self.clock()

    def since_poll(self) -> float:
        """Seconds since the last request for records returned (0 while one is in progress)."""
        return 0.0 if self.active else max(0.0, self.clock() - self.last_poll)

    def time_to_expiry(self) -> float:
        """Seconds until the interval expires (inf while a request is in progress)."""
        if self.active:
            return float("inf")
        return max(0.0, self.last_poll + self.max_interval - self.clock())

    def expired(self) -> bool:
        """True once no request for records was in progress or made for the whole interval."""
        return not self.active and self.clock() >= self.last_poll + self.max_interval
