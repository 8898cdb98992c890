"""A background heartbeat thread for one member, with rebalance callbacks.

Heartbeats run on their own thread on the group's schedule, so they never depend on a
blocking read returning. The runner turns each reply into callbacks, always in this order:
``on_partitions_revoked`` (commit, release the fence; the runner then hands the partitions
back on the next heartbeat, sent at once), then ``on_partitions_assigned`` (claim the fence
with the grant token, then read). ``on_partitions_lost`` means the member was evicted or
fenced: the partitions are already someone else's, so nothing may be committed for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from coordinator.errors import MembershipError, PartstreamError, StateLostError
from coordinator.heartbeat import Heartbeat
from coordinator.member import Member
from coordinator.records import Grant, HeartbeatResult
from coordinator.types import TopicPartition

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

    Thread-safe: :meth:`owned`, :meth:`session_alive` and :meth:`close` may be called from
    any thread. After eviction or fencing it rejoins by itself (with backoff).
    """

    def __init__(
        self,
        member: Member,
        listener: RebalanceListener | None = None,
        *,
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

    # -- public --------------------------------------------------------------------------
    def start(self) -> MemberRunner:
        """Join (errors such as DuplicateInstanceError raise here) and start heartbeating."""
        self._apply(self._join())
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

    def wake(self) -> None:
        """Heartbeat now (e.g. the subscription changed) instead of at the next interval."""
        self._wake.set()

    def close(self, *, leave: bool = True, temporary: bool = False) -> None:
        """Stop heartbeating; revoke what is owned (listener commits) and leave the group."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
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
            delay = self._hb.time_to_next()
            if self._releasing:
                return 0.0
            if self._reconciling:  # partitions are waiting to move: poll faster
                delay = min(delay, self._hb.interval / 5)
            return delay

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._delay())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
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
