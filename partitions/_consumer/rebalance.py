"""Rebalances as the consumer sees them: heartbeat-thread callbacks become events that the
consumer applies on its own thread, inside ``poll()``.

The heartbeat thread (see :class:`~coordinator.runner.MemberRunner`) claims the fence of a
granted partition at once, then posts the event; a revocation waits (at most half a session,
so the session it keeps alive never expires) until the consumer ran the user's
``on_partitions_revoked``, committed what was processed and released the fence: only then
does the runner hand the partition back. A blocked ``XREAD`` is cut short with CLIENT UNBLOCK.

A consumer that stopped polling for ``max_poll_interval_ms`` gets a plain "lost" event: the
runner already released the fences and left, so the acks that event flushes are refused.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import redis.exceptions as rex

from coordinator.records import Grant
from coordinator.runner import MemberRunner, RebalanceListener
from coordinator.settings import GroupSettings
from partitions._base.errors import PartstreamError
from partitions._base.fence import claim_fence, release_fence
from partitions._base.records import Record
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.fetcher import PartitionState
from partitions._telemetry.metrics import ConsumerMetrics

log = logging.getLogger("partstream.consumer")


class Bridge:
    """The runner's listener: turns heartbeat-thread callbacks into events for the consumer."""

    def __init__(self, consumer: RebalanceMixin) -> None:
        self.c = consumer

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        c = self.c
        if threading.get_ident() == c._thread_id:  # close(): we are the consumer thread
            c._revoke(revoked)
            return
        done = threading.Event()
        c._post(("revoke", revoked, done))
        # Wait for the consumer to finish and commit, but never so long that the session
        # (which this thread keeps alive) expires: then the records are simply redelivered.
        if not c._closing and not done.wait(c._settings.session_timeout_ms / 2000):
            log.warning(
                "consumer did not hand back %s in time; uncommitted records of "
                "them will be redelivered",
                sorted(revoked),
            )

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        c = self.c
        mine = {}
        failed: set[TopicPartition] = set()
        for tp, grant in assigned.items():
            try:
                claimed = claim_fence(
                    c._client,
                    c._keys,
                    c.group,
                    tp.topic,
                    tp.partition,
                    c.member_id,
                    grant.token,
                    durability=c._settings.durability,
                    retry_for=c._settings.heartbeat_interval_ms / 1000,
                )
            except PartstreamError as err:
                # Its node is unreachable (failing over, say): hand the partition back rather
                # than hold a grant nobody reads; it is granted again once it can be claimed.
                log.warning("%s: cannot claim its fence now (%s); handing it back", tp, err)
                failed.add(tp)
                continue
            if claimed:
                mine[tp] = grant
            else:
                log.info("%s: a newer grant already holds the fence", tp)
        if failed:
            c._runner.give_back(failed)
        c._post(("assign", mine, None))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.c._post(("lost", lost, None))


class RebalanceMixin:
    """The consumer's side of rebalancing (state it shares with :class:`Consumer`)."""

    config: ConsumerConfig
    group: str
    member_id: str
    _conn: Connection
    _client: Any
    _keys: Any
    _listener: RebalanceListener | None
    _runner: MemberRunner
    _parts: dict[TopicPartition, PartitionState]
    _retention: dict[str, str]
    _buf: list[Record]
    _pos: int
    _handed: list[Record]
    _current: Record | None
    _acks: dict[TopicPartition, list[str]]
    _events: deque[tuple[str, Any, threading.Event | None]]
    _events_lock: threading.Lock
    _closing: bool
    _thread_id: int
    _blocker: Any
    _blocker_id: int | None
    _metrics: ConsumerMetrics | None

    @property
    def _settings(self) -> GroupSettings:
        last = self._runner.member.last
        return last.settings if last is not None else self._runner.member.settings

    def _confirm(self, records: Any) -> None:
        raise NotImplementedError

    def _commit_acks(self, only: set[TopicPartition] | None = None) -> list[TopicPartition]:
        raise NotImplementedError

    def _post(self, event: tuple[str, Any, threading.Event | None]) -> None:
        with self._events_lock:
            self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        """Interrupt a blocking wait of the consumer thread (from the heartbeat thread)."""
        if self._blocker is None:
            return
        try:
            if self._blocker_id is None:
                return
            self._client.client_unblock(self._blocker_id)
        except rex.RedisError:
            pass

    def _sync(self) -> None:
        """Apply rebalance events posted by the heartbeat thread, in order."""
        while True:
            with self._events_lock:
                if not self._events:
                    return
                kind, tps, done = self._events.popleft()
            try:
                if kind == "revoke":
                    self._revoke(tps)
                elif kind == "assign":
                    self._assign(tps)
                else:
                    self._flush_lost(tps)
                    self._drop(tps)
                    lost_cb = getattr(self._listener, "on_partitions_lost", None)
                    if lost_cb is not None:
                        lost_cb(set(tps))
            finally:
                if done is not None:
                    done.set()

    def _assign(self, grants: dict[TopicPartition, Grant]) -> None:
        for tp, grant in grants.items():
            st = PartitionState(self._conn, self.group, tp, self.member_id, grant.token)
            st.retention = self._retention.get(tp.topic, "")
            self._parts[tp] = st
        if self._metrics is not None:
            self._metrics.rebalanced(assigned=grants)
        if self._listener is not None and grants:
            self._listener.on_partitions_assigned(set(grants))

    def _revoke(self, revoked: set[TopicPartition]) -> None:
        known = {tp for tp in revoked if tp in self._parts}
        if self._listener is not None and known:
            self._listener.on_partitions_revoked(set(known))
        if self.config.auto_commit:
            keep = [r for r in self._handed if (r.topic, r.partition) not in known]
            self._confirm([r for r in self._handed if (r.topic, r.partition) in known])
            self._handed = keep
        try:
            self._commit_acks(only=known)
        except PartstreamError as err:
            log.warning("commit on revoke failed: %s", err)
        for tp in known:
            st = self._parts[tp]
            try:
                release_fence(
                    self._client,
                    self._keys,
                    self.group,
                    tp.topic,
                    tp.partition,
                    self.member_id,
                    int(st.fence.split(" ")[1]),
                    durability=self._settings.durability,
                )
            except PartstreamError as err:
                log.warning("release of %s failed: %s", tp, err)
        self._drop(known)

    def _flush_lost(self, tps: set[TopicPartition]) -> None:
        # Acks of records processed before the loss still go out, through the fence: if a
        # new owner holds it they are refused (and counted), else they record real work.
        if self.config.auto_commit:
            self._confirm([r for r in self._handed if (r.topic, r.partition) in tps])
        try:
            self._commit_acks(only={tp for tp in tps if tp in self._parts})
        except PartstreamError as err:
            log.info("acks of lost partitions not sent: %s", err)

    def _drop(self, tps: set[TopicPartition]) -> None:
        """Stop reading ``tps``: revoked, lost, or found fenced by a newer owner."""
        if self._metrics is not None:
            self._metrics.rebalanced(revoked=[tp for tp in tps if tp in self._parts])
        self._drop_buffered(tps)
        for tp in tps:
            self._parts.pop(tp, None)
            self._acks.pop(tp, None)
        self._handed = [r for r in self._handed if (r.topic, r.partition) not in tps]
        if self._current is not None and (self._current.topic, self._current.partition) in tps:
            self._current = None

    def _drop_buffered(self, tps: set[TopicPartition]) -> None:
        if self._pos < len(self._buf):
            self._buf = [r for r in self._buf[self._pos :] if (r.topic, r.partition) not in tps]
            self._pos = 0
