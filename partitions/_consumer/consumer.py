"""The consumer: a member of a group that reads, in order, only the partitions it owns.

Guarantees (see the invariants in docs/DESIGN.md):

* **One owner** (G): every read and ack is fenced by the grant the coordinator gave this
  member; once a partition moved on, this consumer neither receives its entries nor acks
  them (refused acks are counted in :attr:`Consumer.refused_acks`). A consumer whose session
  may have expired (it was paused) hands out nothing until its heartbeat thread caught up.
* **Liveness**: the session detects a dead process, ``max_poll_interval_ms`` a live one
  that stopped asking for records (a stuck handler): its heartbeat thread then gives its
  partitions up at once, and the next ``poll()`` raises PollIntervalExceededError and rejoins.
* **Order** (O): a partition's records come in id order; a new owner first redelivers what
  the previous owner left unacked, in id order, then new records.
* **At least once, bounded duplicates** (L, D): a record is acked only after it was handed
  out and the caller came back (auto-commit) or called :meth:`Consumer.commit`; only
  records unacked at a crash or revocation are delivered again.
* **Dead letters**: a record delivered ``max_deliveries`` times (see :meth:`Consumer.nack`) or
  whose payload was trimmed before it was acked goes to the partition's dead-letter stream,
  atomically with its ack; its partition keeps flowing.

Rebalance callbacks of a user :class:`~coordinator.runner.RebalanceListener` run on the
consumer's own thread, inside :meth:`poll`: revocations (the user may still commit) before
assignments. Not thread-safe: use a Consumer from one thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import redis.exceptions as rex

from coordinator.member import Member
from coordinator.runner import MemberRunner, RebalanceListener
from partitions._admin.offsets import target_id
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import (
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    NotOwnerError,
    PartstreamError,
    translate,
)
from partitions._base.keys import validate_name
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.fetcher import Fetcher, PartitionState
from partitions._consumer.rebalance import Bridge, RebalanceMixin
from partitions._producer.producer import METADATA_MAX_AGE_S
from partitions._telemetry.metrics import ClientMetrics, consumer_metrics
from partitions._telemetry.tracing import TracerProvider, consumer_tracer

log = logging.getLogger("partstream.consumer")

# Pause between attempts while the server is unreachable, inside one poll().
_RECONNECT_PAUSE_S = 0.1


class Consumer(RebalanceMixin):
    """Reads records of ``topics`` as a member of ``group``; iterable, with :meth:`poll`.

    ``group_settings`` apply only when this member creates the group. Use as a context
    manager, or call :meth:`close` (commit, release, leave). Use from one thread.

    ``metrics``: record the consumer's client metrics there (:mod:`partitions._telemetry.metrics`),
    per hand-out and per fetch; ``tracing``: True (the global tracer provider) or a tracer
    provider, for a ``process`` span per record of iteration and a ``poll`` span per
    ``poll()`` (:mod:`partitions._telemetry.tracing`). Both off by default, at no cost.
    """

    def __init__(
        self,
        group: str,
        topics: str | Iterable[str],
        *,
        conn: Connection | None = None,
        config: ConsumerConfig | None = None,
        instance_id: str | None = None,
        listener: RebalanceListener | None = None,
        client_config: ClientConfig | None = None,
        group_settings: GroupSettings | None = None,
        metrics: ClientMetrics | None = None,
        tracing: bool | TracerProvider = False,
    ) -> None:
        self.config = config or ConsumerConfig()
        self.group = validate_name(group, "group")
        names = [topics] if isinstance(topics, str) else sorted(set(topics))
        if not names:
            raise ConfigError("a consumer needs at least one topic")
        self._owns_conn = conn is None
        self._conn = conn or connect(client_config)
        self.config.check_against(self._conn.config)
        self._client, self._keys = self._conn.client, self._conn.keys
        self._admin = TopicAdmin(self._conn)
        metas = {name: self._admin.get(name) for name in names}
        counts = {name: m.partitions for name, m in metas.items()}
        self.topics = tuple(names)
        # Partition counts as last read: a topic that grows is picked up within this age.
        self._counts = counts
        self._retention = {name: _safe_retention(m.spec) for name, m in metas.items()}
        self._meta_at = time.monotonic() + METADATA_MAX_AGE_S
        start = "0" if self.config.auto_offset_reset == "earliest" else "$"
        self._metrics = consumer_metrics(metrics, self.group)
        self._fetcher = Fetcher(
            self._conn, fetch_count=self.config.fetch_count, start=start, metrics=self._metrics
        )
        self._listener = listener
        self._parts: dict[TopicPartition, PartitionState] = {}
        self._buf: list[Record] = []
        self._pos = 0
        # Handed out by poll() and not yet committed: the last poll's records with
        # auto-commit, every one since the last commit() without it.
        self._handed: list[Record] = []
        self._current: Record | None = None  # the record iteration handed out last
        self._acks: dict[TopicPartition, list[str]] = {}  # processed, acked on the next call
        self._events: deque[tuple[str, Any, threading.Event | None]] = deque()
        self._events_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._thread_id = threading.get_ident()
        self._check_at = 0.0
        # Blocking waits (XREAD BLOCK) on a connection of their own; a cluster polls instead
        # (a blocking read over several slots does not exist). Opened on first use.
        self._blocking = not self._conn.is_cluster
        self._blocker: Any = None
        self._blocker_id: int | None = None
        # The last connection failure poll() rode out (None: none yet), for diagnostics.
        self.last_error: ConnectionFailedError | None = None
        self._warned_at = 0.0
        self._durable_for: GroupSettings | None = None
        member = Member(
            self._client,
            self._keys,
            self.group,
            counts,
            instance_id=instance_id,
            client_info=f"partstream consumer pid {os.getpid()}",
            settings=group_settings,
        )
        self.member_id = member.member_id
        self._tracer = consumer_tracer(tracing, self.group, self.member_id)
        if self._metrics is not None:
            self._metrics.track_owned(lambda: len(self._parts))
        self._runner = MemberRunner(
            member, Bridge(self), max_poll_interval_ms=self.config.max_poll_interval_ms
        )
        self._runner.start()

    # -- reading ----------------------------------------------------------------------------
    def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records of owned partitions, waiting up to ``timeout`` s.

        With auto-commit, the records the previous poll returned are acked first (riding on
        this poll's reads). Returns [] on timeout. Raises PollIntervalExceededError (once, then
        rejoins) if the previous call returned more than ``max_poll_interval_ms`` ago.
        """
        start = time.time_ns() if self._tracer is not None else 0
        with self._runner.polling():
            self._enter()
            if self.config.auto_commit and self._handed:
                self._confirm(self._handed)
                self._handed = []
            batch = self._take(max_records or self.config.max_poll_records, timeout)
            if batch:
                self._handed = batch if self.config.auto_commit else self._handed + batch
                if self._tracer is not None:
                    self._tracer.received(batch, start)
            return batch

    def __iter__(self) -> Iterator[Record]:
        """Records one by one, forever (until close). With auto-commit a record is acked once
        the loop asks for the next one: leaving the loop (break, exception) leaves the last
        record unacked, to be delivered again. A handler that keeps a record past
        ``max_poll_interval_ms`` ends the loop with PollIntervalExceededError (iterate again
        to continue: the member is rejoining). With tracing, each record's ``process`` span
        is current while the loop body runs."""
        records = self._iterate()
        return records if self._tracer is None else self._tracer.process(records)

    def _iterate(self) -> Iterator[Record]:
        while not self._closed:
            with self._runner.polling():
                self._enter()
                batch = self._take(1, self.config.block_ms / 1000)
            if not batch:
                continue
            rec = self._current = batch[0]
            yield rec
            if self._current is rec and self.config.auto_commit:
                self._confirm((rec,))
            self._current = None

    def _take(self, n: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sync()
                if self._pos < len(self._buf) and self._alive():
                    out = self._buf[self._pos : self._pos + n]
                    if any(r._claim for r in out):
                        out = _isolate_suspects(out)
                    self._pos += len(out)
                    if self._pos >= len(self._buf):
                        self._buf, self._pos = [], 0
                    if any(r._claim for r in out):
                        out = self._record_handout(out)
                        if not out:
                            continue
                    self._note_positions(out)
                    if self._metrics is not None:
                        self._metrics.consumed(out)
                    return out
                if self._alive() and self._parts:
                    self._fill()
                    if self._buf:
                        continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._idle(remaining)
            except ConnectionFailedError as err:
                # The server went away (restart, failover, network): ride it out within
                # this poll's timeout, as a Kafka consumer does; the heartbeat thread
                # decides whether the session survives it.
                self._lost_connection(err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(remaining, _RECONNECT_PAUSE_S))

    def _lost_connection(self, err: ConnectionFailedError) -> None:
        """After a failed read, hand-out or wait: forget what was fetched but not handed out
        (it stays pending for the group) and recover each partition, in id order, from the
        last record handed out; the next call reconnects (to the new primary, after a
        failover)."""
        self.last_error = err
        now = time.monotonic()
        if now >= self._warned_at:
            self._warned_at = now + 5.0
            log.warning("consumer %s: %s; retrying", self.member_id, err)
        self._buf, self._pos = [], 0
        for st in self._parts.values():
            st.cursor = st.last_id or "-"
        self._reset_blocker()

    def _reset_blocker(self) -> None:
        # A blocking connection that failed (or whose server was demoted) is dropped; the
        # next wait opens one where the primary is now, with a new id for CLIENT UNBLOCK.
        old, self._blocker, self._blocker_id = self._blocker, None, None
        if old is None:
            return
        with contextlib.suppress(Exception):
            if old.connection is not None:
                old.connection.disconnect()
            old.close()

    def _open_blocker(self) -> Any:
        if self._blocker is None:
            try:
                blocker = self._client.client()  # a client on one connection of the pool
            except rex.RedisError as err:
                raise translate(err, "connecting for blocking reads") from err
            try:
                self._blocker_id = blocker.client_id()
            except rex.RedisError as err:
                blocker.close()
                raise translate(err, "connecting for blocking reads") from err
            self._blocker = blocker
        return self._blocker

    def _fill(self) -> None:
        s, m = self._settings, self._metrics
        started = time.monotonic() if m is not None else 0.0
        records, refused = self._fetcher.fetch(
            list(self._parts.values()), self._acks, s.max_deliveries, s.reclaim_idle_ms
        )
        if m is not None:
            m.fetched(time.monotonic() - started)
        for st, res in refused:
            log.info("%s/%s is %s's now: dropping it", st.topic, st.partition, res.detail)
            self._drop({st.tp})
        if self.config.foreign_entries == "dead_letter":
            records = self._dead_letter_foreign(records)
        self._buf, self._pos = records, 0

    def _record_handout(self, out: list[Record]) -> list[Record]:
        """Before recovered records are handed out, record the hand-out on the server (so a
        record that crashes its consumer is counted every time, and one that only sat in a
        buffer never is); what is no longer pending (trimmed, dead-lettered) is skipped."""
        claims: dict[TopicPartition, list[Record]] = {}
        for r in out:
            if r._claim:
                claims.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        gone, refused, again = self._fetcher.hand(self._parts, claims, self._acks)
        for st, res in refused:
            log.info("%s/%s is %s's now: dropping it", st.topic, st.partition, res.detail)
        lost = {st.tp for st, _ in refused} | again
        if again:
            self._drop_buffered(again)
        self._drop({st.tp for st, _ in refused})
        kept = []
        for r in out:
            if (r._claim and r.id in gone) or (r.topic, r.partition) in lost:
                continue
            r._recorded()
            kept.append(r)
        return kept

    def _dead_letter_foreign(self, records: list[Record]) -> list[Record]:
        """ConsumerConfig(foreign_entries="dead_letter"): entries another client wrote go to
        the dead-letter stream as ``malformed`` instead of to the application."""
        foreign: dict[TopicPartition, list[Record]] = {}
        for r in records:
            if r.foreign:
                foreign.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        if not foreign:
            return records
        for tp, recs in foreign.items():
            self._fetcher.dead_letter(self._parts[tp], recs, "malformed", handed=False)
        return [r for r in records if not r.foreign]

    def _idle(self, remaining: float) -> None:
        block_ms = int(
            min(remaining * 1000, self.config.block_ms, self._settings.heartbeat_interval_ms)
        )
        if not self._alive() or not self._parts:
            with self._events_lock:
                if self._events:
                    return
            time.sleep(max(block_ms, 1) / 1000 if self._parts else min(block_ms, 20) / 1000)
            return
        if self._acks:  # do not sit on acks while idle
            self._commit_acks()
        with self._events_lock:
            if self._events:
                return
        waiting = {st.keys[0]: st.tail for st in self._parts.values() if st.tail and not st.cursor}
        if not waiting or block_ms <= 0:
            return
        if not self._blocking:  # a cluster: no blocking read across slots
            self._fetcher.poll_wait(waiting, block_ms, lambda: bool(self._events))
            return
        blocker = self._open_blocker()
        with self._events_lock:
            if self._events:  # posted while the connection opened: its wake-up was missed
                return
        try:
            blocker.xread(waiting, count=1, block=block_ms)
        except rex.ResponseError as err:
            if not str(err).startswith("UNBLOCKED"):
                raise translate(err, "waiting for new entries") from err
            # The server changed role under the blocked read (a primary demoted to replica
            # by a failover): reconnect, which finds the new primary, and read again.
            self._reset_blocker()
        except rex.RedisError as err:
            raise translate(err, "waiting for new entries") from err

    # -- committing -------------------------------------------------------------------------
    def commit(self, records: Iterable[Record] | None = None) -> None:
        """Ack ``records`` (default: every record handed out and not yet acked) now.

        Raises NotOwnerError if a partition moved on meanwhile (its records will be or were
        redelivered to the new owner), PollIntervalExceededError (nothing is acked) if the
        member left the group because it did not poll within ``max_poll_interval_ms``.
        """
        with self._runner.polling():
            self._enter()
            if records is None:
                handed = self._handed + ([self._current] if self._current else [])
                self._handed, self._current = [], None
                self._confirm(handed)
            else:
                records = list(records)
                if self._current is not None and self._current in records:
                    self._current = None
                self._confirm(records)
            refused = self._commit_acks()
        if refused:
            raise NotOwnerError(
                f"commit refused for {', '.join(f'{t}/{p}' for t, p in refused)}: "
                "this member no longer owns them"
            )

    def nack(self, record: Record) -> None:
        """Processing ``record`` failed: deliver it again next, before later records of its
        partition not yet handed out; after ``max_deliveries`` deliveries it goes to the
        dead-letter stream (reason ``max_deliveries``) and its partition moves on."""
        self._enter()
        st = self._owned_state(record)
        self._forget(record)
        if self._fetcher.retry(st, [record], self._settings.max_deliveries):
            again = record.again()
            self._buf[self._pos : self._pos] = [again]

    def dead_letter(self, record: Record, reason: str = "rejected") -> None:
        """Move ``record`` to its partition's dead-letter stream now, with ``reason``."""
        self._enter()
        st = self._owned_state(record)
        self._forget(record)
        self._fetcher.dead_letter(st, [record], reason)

    # -- positions --------------------------------------------------------------------------
    def seek(self, topic: str, partition: int, to: str | int) -> None:
        """Read an owned partition from ``to``: 'earliest', 'latest', an entry id (reading
        continues after it) or a timestamp in epoch ms (reading starts at that time).

        The group's pending entries of that partition are forgotten; records buffered but
        not handed out are dropped. NotOwnerError if this member does not own it."""
        self._enter()
        self._sync()
        st = self._parts.get(TopicPartition(topic, partition))
        if st is None:
            raise NotOwnerError(f"{topic}/{partition} is not assigned to this consumer")
        self._drop_buffered({st.tp})
        self._handed = [r for r in self._handed if (r.topic, r.partition) != st.tp]
        self._acks.pop(st.tp, None)
        self._fetcher.seek(st, target_id(to))

    def position(self) -> dict[TopicPartition, str | None]:
        """Per owned partition, the id of the last record handed out (None: none yet)."""
        self._sync()
        return {tp: st.last_id for tp, st in sorted(self._parts.items())}

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns and reads now."""
        self._sync()
        return set(self._parts)

    def fence(self, topic: str, partition: int) -> str | None:
        """The grant (``"<member_id> <token>"``) this consumer reads a partition under."""
        st = self._parts.get(TopicPartition(topic, partition))
        return None if st is None else st.fence

    @property
    def refused_acks(self) -> int:
        """Acks the fence refused because the partition had moved to another member."""
        return self._fetcher.refused_acks

    @property
    def dead_lettered(self) -> int:
        """Records this consumer moved to dead-letter streams."""
        return self._fetcher.dead_lettered

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what was processed, release the partitions, leave the group, stop."""
        if self._closed:
            return
        self._thread_id = threading.get_ident()
        try:
            self._sync()
            if self.config.auto_commit:
                self._confirm(self._handed)
                self._handed = []
            self._commit_acks()
        except PartstreamError as err:
            log.warning("commit on close failed: %s", err)
        finally:
            self._closing = True
            self._wake()
            with self._events_lock:
                for _, _, done in self._events:
                    if done is not None:
                        done.set()
            self._runner.close()  # revokes what is left on this thread, then leaves
            self._closed = True
            if self._metrics is not None:
                self._metrics.close()
            with self._events_lock:
                self._events.clear()
            self._fetcher.close()
            if self._blocker is not None:
                self._blocker.close()
            if self._owns_conn:
                self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _enter(self) -> None:
        if self._closed:
            raise ClosedError("the consumer is closed")
        if self._runner.fatal is not None:
            raise self._runner.fatal
        if time.monotonic() >= self._meta_at:
            self._refresh_topics()
        self._thread_id = threading.get_ident()
        settings = self._settings
        if settings is not self._durable_for:  # the group's stored settings, once known
            self._durable_for = settings
            self._fetcher.durability = settings.durability
            self._fetcher.wait_ms = max(100, min(5000, settings.session_timeout_ms // 3))

    def _refresh_topics(self) -> None:
        """Re-read partition counts; a grown topic joins the group's assignment (the member
        sends the new counts with its next heartbeat, which the runner sends at once)."""
        self._meta_at = time.monotonic() + METADATA_MAX_AGE_S
        metas = {name: self._admin.get(name) for name in self.topics}
        counts = {name: m.partitions for name, m in metas.items()}
        self._retention = {name: _safe_retention(m.spec) for name, m in metas.items()}
        for st in self._parts.values():
            st.retention = self._retention[st.topic]
        if counts != self._counts:
            log.info("topic partitions changed %s -> %s", self._counts, counts)
            self._counts = counts
            self._runner.member.update_topics(counts)
            self._runner.wake()

    def _alive(self) -> bool:
        now = time.monotonic()
        if now < self._check_at:
            return True
        margin = self._settings.session_timeout_ms / 10000
        if not self._runner.session_alive(margin=margin):
            return False
        self._check_at = now + min(0.05, margin)
        return True

    def _confirm(self, records: Iterable[Record]) -> None:
        acks, parts = self._acks, self._parts
        key: tuple[str, int] = ("", -1)
        ids: list[str] | None = None
        for r in records:
            if r.partition != key[1] or r.topic != key[0]:
                key = (r.topic, r.partition)
                ids = acks.setdefault(TopicPartition(*key), []) if key in parts else None
            if ids is not None:
                ids.append(r.id)

    def _commit_acks(self, only: set[TopicPartition] | None = None) -> list[TopicPartition]:
        if only is not None:
            acks = {tp: self._acks.pop(tp) for tp in only if tp in self._acks}
        else:
            acks, self._acks = self._acks, {}
        refused = self._fetcher.ack(
            self._parts, {tp: ids for tp, ids in acks.items() if tp in self._parts}
        )
        for st, _ in refused:
            self._drop({st.tp})
        return [st.tp for st, _ in refused]

    def _note_positions(self, out: list[Record]) -> None:
        last = {(r.topic, r.partition): r.id for r in out}
        for key, rid in last.items():
            st = self._parts.get(TopicPartition(*key))
            if st is not None:
                st.last_id = rid

    def _owned_state(self, record: Record) -> PartitionState:
        st = self._parts.get(TopicPartition(record.topic, record.partition))
        if st is None:
            raise NotOwnerError(f"{record.topic}/{record.partition} is no longer assigned here")
        return st

    def _forget(self, record: Record) -> None:
        if self._current is record:
            self._current = None
        self._handed = [r for r in self._handed if r is not record]


def _safe_retention(spec: TopicSpec) -> str:
    """consume.lua's retention argument: what safe retention keeps, or '' (none)."""
    if not spec.safe_retention or not (spec.max_length or spec.retention_ms):
        return ""
    return f"{spec.max_length or 0} {spec.retention_ms or 0}"


def _isolate_suspects(out: list[Record]) -> list[Record]:
    """A recovered record that was handed out before and never acked (its consumer crashed,
    or the handler nacked it) goes out alone, and a batch stops before one: if it is what
    crashes the process, only its own hand-out is recorded, not those of the records beside
    it, so a crash-looping record reaches the dead-letter stream alone."""
    if out[0]._claim and out[0].deliveries > 1:
        return out[:1]
    for i, r in enumerate(out):
        if r._claim and r.deliveries > 1:
            return out[:i]
    return out
