"""A background heartbeat thread for one member, with rebalance callbacks.

Heartbeats run on their own thread on the group's schedule, so they never depend on a
blocking read returning. The runner turns each reply into callbacks, always in this order:
``on_partitions_revoked`` (commit, release the fence; the runner then hands the partitions
back on the next heartbeat, sent at once), then ``on_partitions_assigned`` (claim the fence
with the grant token, then read). ``on_partitions_lost`` means the member was evicted or
fenced: the partitions are already someone else's, so nothing may be committed for them.

Liveness has two clocks. The session (the server's) detects a dead process: heartbeats stop.
The poll interval (``max_poll_interval_ms``, Kafka's ``max.poll.interval.ms``) detects a live
process that stopped consuming: heartbeats go on from this thread while the application is
stuck in a handler. Every consumer shell brackets each request for records with
:meth:`MemberRunner.polling`; when none came for the whole interval, this thread releases the
partitions' fences, leaves the group (the coordinator reassigns at once, not after a session)
and reports the partitions lost. It stays out until the application polls again: that request
raises :class:`~partitions._base.errors.PollIntervalExceededError` once and starts the rejoin.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from coordinator.listener import GrantListener, NullListener, RebalanceListener, notify
from coordinator.member import Member
from coordinator.session import Backoff, Beat, Join, Leave, Notify, ReleaseFence, Session, Wait
from partitions._base.errors import StateLostError
from partitions._base.fence import release_fence
from partitions._base.steps import Steps, dispatch, drive
from partitions._base.types import Grant, TopicPartition

log = logging.getLogger("partstream.coordinator")


class RunnerBase:
    """What both runner shells hold: the member, its listener, the :class:`Session`, and
    how the member's actions are done (the shells add fences, callbacks and waits)."""

    def __init__(
        self,
        member: Any,
        listener: GrantListener | None,
        max_poll_interval_ms: int | None,
        clock: Callable[[], float],
    ) -> None:
        self.member = member
        self.listener: GrantListener = listener or NullListener()
        self._session = Session(
            member.member_id,
            member.group,
            member.settings,
            max_poll_interval_ms=max_poll_interval_ms,
            clock=clock,
        )

    def _member_actions(self) -> dict[type, Callable[[Any], Any]]:
        m = self.member
        return {
            Join: lambda a: m.join(),
            Beat: lambda a: m.heartbeat(a.released),
            Leave: lambda a: m.leave(temporary=a.temporary),
        }

    @property
    def last_error(self) -> BaseException | None:
        return self._session.last_error

    @property
    def fatal(self) -> StateLostError | None:
        """An error the member cannot recover from by rejoining (its group vanished): the
        loop stopped, every partition was reported lost, and the owner raises it."""
        return self._session.fatal


class MemberRunner(RunnerBase):
    """Keeps one :class:`Member` alive on a daemon thread and reports partition changes.

    Thread-safe: :meth:`owned`, :meth:`session_alive`, :meth:`polling` and :meth:`close`
    may be called from any thread. After eviction or fencing it rejoins by itself (with
    backoff). With ``max_poll_interval_ms`` (None: no such deadline, for users that do not
    poll through :meth:`polling`) it leaves the group when the application stops polling.
    What it does, and in which order, is :class:`coordinator.session.Session`'s; this class
    runs it on a thread, calls the listener there, and guards the state with a lock.
    """

    def __init__(
        self,
        member: Member,
        listener: GrantListener | None = None,
        *,
        max_poll_interval_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(member, listener, max_poll_interval_ms, clock)
        self.member: Member = member
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._perform = dispatch(
            {
                **self._member_actions(),
                ReleaseFence: self._release_fence,
                Notify: lambda a: notify(self.listener, a),
                Wait: self._wait,
                Backoff: lambda a: self._stop.wait(a.seconds),
            }
        )

    def _drive(self, steps: Steps[None]) -> None:
        drive(steps, self._perform, errors=(Exception,), guard=lambda: self._lock)

    # -- public --------------------------------------------------------------------------
    def start(self) -> MemberRunner:
        """Join (errors such as DuplicateInstanceError raise here) and start heartbeating."""
        self._drive(self._session.start_steps())
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.member.member_id}", daemon=True
        )
        self._thread.start()
        return self

    def owned(self) -> dict[TopicPartition, Grant]:
        """The partitions this member owns now, with their grants (a copy)."""
        with self._lock:
            return dict(self._session.owned)

    def session_alive(self, margin: float = 0.0) -> bool:
        """False once the server may have evicted us (no successful heartbeat for a session)."""
        with self._lock:
            return self._session.session_alive(self.member.joined, margin)

    @contextmanager
    def polling(self) -> Iterator[None]:
        """Bracket one request of the application for records: a ``poll()``, an iteration
        step, a ``commit()``. The one hook every shell (threaded, asyncio, a pool running
        handlers concurrently) calls, around the place it *takes* records: the poll interval
        runs only between requests, so waiting inside one never counts and a pool is judged
        by the last record it took, not by each handler.

        Raises PollIntervalExceededError, once, if the member left the group because no
        request came for ``max_poll_interval_ms``; the member then rejoins in the background
        and the next request proceeds normally. Reentrant and thread-safe.
        """
        if self._session.poll is None:
            yield
            return
        with self._lock:
            left = self._session.begin_poll()
        if left is not None:
            self._wake.set()  # rejoin now
            raise left
        try:
            yield
        finally:
            with self._lock:
                self._session.end_poll()

    def give_back(self, partitions: set[TopicPartition]) -> None:
        """Hand granted partitions back to the coordinator (released with the next heartbeat,
        sent at once) instead of keeping them: e.g. their fence could not be claimed while
        their node failed over. The coordinator grants them again, perhaps to this member."""
        with self._lock:
            self._session.give_back(partitions)
        self._wake.set()

    def wake(self) -> None:
        """Heartbeat now (e.g. the subscription changed) instead of at the next interval."""
        self._wake.set()

    def close(self, *, leave: bool = True, temporary: bool = False) -> None:
        """Stop heartbeating; revoke what is owned (listener commits) and leave the group."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        joined = lambda: self.member.joined  # noqa: E731
        self._drive(self._session.close_steps(joined=joined, leave=leave, temporary=temporary))

    def __enter__(self) -> MemberRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the heartbeat thread ------------------------------------------------------------
    def _run(self) -> None:
        self._drive(self._session.loop_steps(lambda: self.member.joined, self._stop.is_set))

    def _wait(self, action: Wait) -> None:
        self._wake.wait(action.seconds)
        self._wake.clear()

    def _release_fence(self, action: ReleaseFence) -> bool:
        m, tp = self.member, action.tp
        token = action.grant.token
        layout = m.layouts.of(tp.topic)
        return release_fence(m.client, m.keys, m.group, layout, tp.partition, m.member_id, token)


__all__ = ["MemberRunner", "NullListener", "RebalanceListener", "RunnerBase"]
