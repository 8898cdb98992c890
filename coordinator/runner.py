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
from typing import Protocol

from coordinator.heartbeat import Heartbeat, PollTimer
from coordinator.member import Member
from partitions._base.errors import (
    MembershipError,
    PartstreamError,
    PollIntervalExceededError,
    StateLostError,
)
from partitions._base.fence import release_fence
from partitions._base.types import Grant, HeartbeatResult, TopicPartition

log = logging.getLogger("partstream.coordinator")


class RebalanceListener(Protocol):
    """Callbacks run on the heartbeat thread; keep them short (well under the session)."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None: ...

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None: ...


class NullListener:
    """A listener that does nothing."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        pass


class MemberRunner:
    """Keeps one :class:`Member` alive on a daemon thread and reports partition changes.

    Thread-safe: :meth:`owned`, :meth:`session_alive`, :meth:`polling` and :meth:`close`
    may be called from any thread. After eviction or fencing it rejoins by itself (with
    backoff). With ``max_poll_interval_ms`` (None: no such deadline, for users that do not
    poll through :meth:`polling`) it leaves the group when the application stops polling.
    """

    def __init__(
        self,
        member: Member,
        listener: RebalanceListener | None = None,
        *,
        max_poll_interval_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.member = member
        self.listener = listener or NullListener()
        s = member.settings
        self._hb = Heartbeat(s.heartbeat_interval_ms, s.session_timeout_ms, clock=clock)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._owned: dict[TopicPartition, Grant] = {}
        self._releasing: set[TopicPartition] = set()
        self._reconciling = True
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        # An error the member cannot recover from by rejoining (its group vanished): the
        # loop stops, every partition is reported lost, and the owner raises it.
        self.fatal: StateLostError | None = None
        self._poll = PollTimer(max_poll_interval_ms, clock=clock) if max_poll_interval_ms else None
        # Set when the member left for exceeding the poll interval; raised (once) by the next
        # polling(), which also lets this thread rejoin. Until then the member stays out.
        self._poll_left: PollIntervalExceededError | None = None

    # -- public --------------------------------------------------------------------------
    def start(self) -> MemberRunner:
        """Join (errors such as DuplicateInstanceError raise here) and start heartbeating."""
        self._apply(self._join())
        if self._poll is not None:
            with self._lock:
                self._poll.reset()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.member.member_id}", daemon=True
        )
        self._thread.start()
        return self

    def owned(self) -> dict[TopicPartition, Grant]:
        """The partitions this member owns now, with their grants (a copy)."""
        with self._lock:
            return dict(self._owned)

    def session_alive(self, margin: float = 0.0) -> bool:
        """False once the server may have evicted us (no successful heartbeat for a session)."""
        with self._lock:
            return self.member.joined and not self._hb.session_expired(margin)

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
        timer = self._poll
        if timer is None:
            yield
            return
        with self._lock:
            left, self._poll_left = self._poll_left, None
            if left is None:
                timer.begin()
            else:
                timer.reset()
        if left is not None:
            self._wake.set()  # rejoin now
            raise left
        try:
            yield
        finally:
            with self._lock:
                timer.end()

    def give_back(self, partitions: set[TopicPartition]) -> None:
        """Hand granted partitions back to the coordinator (released with the next heartbeat,
        sent at once) instead of keeping them: e.g. their fence could not be claimed while
        their node failed over. The coordinator grants them again, perhaps to this member."""
        with self._lock:
            for tp in partitions:
                self._owned.pop(tp, None)
            self._releasing |= partitions
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
        self._poll_left = None  # closed: ClosedError, not the interval, is what callers see
        with self._lock:
            owned = set(self._owned)
            self._owned.clear()
        if owned:
            self.listener.on_partitions_revoked(owned)
        if leave and self.member.joined:
            try:
                self.member.leave(temporary=temporary)
            except PartstreamError as err:
                log.warning("leave of %s failed: %s", self.member.member_id, err)

    def __enter__(self) -> MemberRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- loop ----------------------------------------------------------------------------
    def _join(self) -> HeartbeatResult:
        result = self.member.join()
        with self._lock:
            self._hb.update(result.heartbeat_interval_ms, result.session_timeout_ms)
            self._hb.reset()
        return result

    def _delay(self) -> float:
        with self._lock:
            if self._poll_left is not None:  # out of the group until polling() wakes us
                return self._hb.interval
            delay = self._hb.time_to_next()
            if self._releasing:
                return 0.0
            if self._reconciling:  # partitions are waiting to move: poll faster
                delay = min(delay, self._hb.interval / 5)
            if self._poll is not None:
                delay = min(delay, self._poll.time_to_expiry())
            return delay

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._delay())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._poll is not None and self._out_for_poll():
                    continue
                if not self.member.joined:
                    self._apply(self._join())
                    continue
                with self._lock:
                    released = set(self._releasing)
                    self._hb.sent()
                result = self.member.heartbeat(released)
                with self._lock:
                    self._hb.succeeded()
                    self._releasing -= released
                self._apply(result)
            except StateLostError as err:
                self.last_error = self.fatal = err
                log.error("member %s: %s", self.member.member_id, err)
                self._drop_all()
                return
            except MembershipError as err:
                self.last_error = err
                log.info("member %s: %s", self.member.member_id, err)
                self._drop_all()
                self._stop.wait(min(1.0, self._hb.interval))
            except PartstreamError as err:
                self.last_error = err
                with self._lock:
                    self._hb.failed()
                    expired = self._hb.session_expired()
                log.warning("heartbeat of %s failed: %s", self.member.member_id, err)
                if expired:
                    self._drop_all()
            except Exception as err:  # a listener bug must not kill heartbeats
                self.last_error = err
                log.exception("member %s: callback or heartbeat error", self.member.member_id)

    def _out_for_poll(self) -> bool:
        with self._lock:
            if self._poll_left is not None:
                return True
        return self._leave_if_not_polled()

    def _leave_if_not_polled(self) -> bool:
        """If the application has not polled for the whole interval: release the fences, leave
        the group so the coordinator reassigns the partitions now, report them lost. True if
        the member left (it then stays out until the next :meth:`polling`)."""
        assert self._poll is not None
        m = self.member
        with self._lock:
            if not self._poll.expired():
                return False
            idle = self._poll.since_poll()
            owned = dict(self._owned)
            self._owned.clear()
            self._releasing.clear()
            self._reconciling = True
            limit_ms = self._poll.max_interval_ms
            parts = ", ".join(f"{t}/{p}" for t, p in sorted(owned)) or "none"
            self._poll_left = PollIntervalExceededError(
                f"member {m.member_id} left group {m.group}: the application did not poll "
                f"(poll(), iteration, commit()) for {idle:.1f} s, over max_poll_interval_ms="
                f"{limit_ms}; its partitions ({parts}) were released to the group's other members, "
                "and records handed out before are no longer its own (drop them: their acks "
                "are refused, their new owners get them again). The member is rejoining: poll "
                "again. If "
                "handlers legitimately take this long, raise max_poll_interval_ms or lower "
                "max_poll_records.",
                member_id=m.member_id,
                max_poll_interval_ms=limit_ms,
                idle_s=idle,
                partitions=frozenset(owned),
            )
        log.warning(
            "member %s of group %s: the application has not polled for %.1f s, over "
            "max_poll_interval_ms=%d (a stuck or too slow handler?): leaving the group so "
            "its partitions (%s) move to other members now; the next poll() rejoins and "
            "raises PollIntervalExceededError",
            m.member_id,
            m.group,
            idle,
            limit_ms,
            parts,
        )
        # Fences first: from now on the stuck call can neither read nor ack these partitions,
        # even before their new owners claim them.
        for tp, grant in sorted(owned.items()):
            try:
                release_fence(
                    m.client, m.keys, m.group, tp.topic, tp.partition, m.member_id, grant.token
                )
            except PartstreamError as err:
                log.warning("release of %s failed: %s", tp, err)
        if m.joined:
            try:
                m.leave()  # for good, static members too: a stuck member is not restarting
            except PartstreamError as err:
                # Heartbeats have stopped: the session expires and the partitions move then.
                log.warning("leave of %s failed: %s", m.member_id, err)
        if owned:
            self.listener.on_partitions_lost(set(owned))
        return True

    def _drop_all(self) -> None:
        with self._lock:
            lost = set(self._owned)
            self._owned.clear()
            self._releasing.clear()
            self._reconciling = True
        if lost:
            self.listener.on_partitions_lost(lost)

    def _apply(self, result: HeartbeatResult) -> None:
        with self._lock:
            self._hb.update(result.heartbeat_interval_ms, result.session_timeout_ms)
            revoke = set(result.to_revoke) - self._releasing
            gone = {tp for tp in self._owned if tp not in result.owned}
            assigned = {
                tp: g
                for tp, g in result.owned.items()
                if tp not in result.to_revoke and self._owned.get(tp) != g
            }
            self._reconciling = result.reconciling
        if gone:
            with self._lock:
                for tp in gone:
                    self._owned.pop(tp, None)
            self.listener.on_partitions_lost(gone)
        if revoke:
            with self._lock:
                known = revoke & set(self._owned)
            if known:
                self.listener.on_partitions_revoked(known)
            with self._lock:
                for tp in revoke:
                    self._owned.pop(tp, None)
                self._releasing |= revoke
            self._wake.set()
        if assigned:
            with self._lock:
                self._owned.update(assigned)
            self.listener.on_partitions_assigned(assigned)
