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

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

from coordinator.member import Member
from coordinator.runner import MemberRunner, RebalanceListener
from partitions._admin.offsets import target_id
from partitions._admin.topics import TopicAdmin
from partitions._base.keys import Layouts
from partitions._base.records import Record
from partitions._base.serde import Serializer, decoder
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.fetcher import Fetcher
from partitions._consumer.ops import Events
from partitions._consumer.rebalance import ThreadBridge, compose
from partitions._consumer.shell import ConsumerShell
from partitions._telemetry.metrics import ClientMetrics, consumer_metrics
from partitions._telemetry.tracing import TracerProvider, consumer_tracer

log = logging.getLogger("partstream.consumer")


class Consumer(ConsumerShell):
    """Reads records of ``topics`` as a member of ``group``; iterable, with :meth:`poll`.

    ``group_settings`` apply only when this member creates the group. Use as a context
    manager, or call :meth:`close` (commit, release, leave). Use from one thread.

    ``metrics``: record the consumer's client metrics there (:mod:`partitions._telemetry.metrics`),
    per hand-out and per fetch; ``tracing``: True (the global tracer provider) or a tracer
    provider, for a ``process`` span per record of iteration and a ``poll`` span per
    ``poll()`` (:mod:`partitions._telemetry.tracing`). Both off by default, at no cost.

    ``value_serializer`` / ``key_serializer``: a :class:`~partitions.Serializer` whose
    ``loads`` gives ``Record.value`` / ``Record.key`` (the bytes stay in ``raw_value`` /
    ``raw_key``); a record that does not load goes to the dead-letter stream (reason
    ``deserialization``, with the error) instead of to the application, and its partition
    flows on. None (the default): values and keys are the bytes, at no cost per record.
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
        value_serializer: Serializer | None = None,
        key_serializer: Serializer | None = None,
    ) -> None:
        self._arguments(group, topics, config)
        decode = decoder(value_serializer, key_serializer)
        self._owns_conn = conn is None
        self._conn = conn or connect(client_config)
        self.config.check_against(self._conn.config)
        admin = TopicAdmin(self._conn)
        metas = {name: admin.get(name) for name in self.topics}
        self._metrics = consumer_metrics(metrics, self.group)
        self._closing = False
        self._thread_id = threading.get_ident()
        member = Member(
            self._conn.client,
            self._conn.keys,
            self.group,
            {name: m.partitions for name, m in metas.items()},
            instance_id=instance_id,
            client_info=f"partstream consumer pid {os.getpid()}",
            settings=group_settings,
            layouts=Layouts(m.layout for m in metas.values()),
        )
        self.member_id = member.member_id
        self._member = member
        self._tracer = consumer_tracer(tracing, self.group, self.member_id)
        events = Events(wake=lambda: self._fetcher.wake())
        self._fetcher = Fetcher(self._conn, interrupted=events.pending)
        self.assignment_state, self._runner, self._flow = compose(
            self._conn, member, self.config, events, metas, listener=listener,
            shell=(ThreadBridge, MemberRunner), apply_here=self._revoke_here,
            closing=lambda: self._closing, metrics=self._metrics, decoder=decode,
        )  # fmt: skip
        if self._metrics is not None:
            parts = self.assignment_state.parts
            self._metrics.track_owned(lambda: len(parts))
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
            batch: list[Record] = self._fetcher.drive(self._flow.poll(max_records, timeout))
        if batch and self._tracer is not None:
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
                rec = self._fetcher.drive(self._flow.next_one())
            if rec is not None:
                yield rec
                self._flow.done_one(rec)

    # -- committing -------------------------------------------------------------------------
    def commit(self, records: Iterable[Record] | None = None) -> None:
        """Ack ``records`` (default: every record handed out and not yet acked) now.

        Raises NotOwnerError if a partition moved on meanwhile (its records will be or were
        redelivered to the new owner), PollIntervalExceededError (nothing is acked) if the
        member left the group because it did not poll within ``max_poll_interval_ms``.
        """
        with self._runner.polling():
            self._enter()
            self._fetcher.drive(self._flow.commit(records))

    def nack(self, record: Record) -> None:
        """Processing ``record`` failed: deliver it again next, before later records of its
        partition not yet handed out; after ``max_deliveries`` deliveries it goes to the
        dead-letter stream (reason ``max_deliveries``) and its partition moves on."""
        self._enter()
        self._fetcher.drive(self._flow.nack(record))

    def dead_letter(
        self, record: Record, reason: str = "rejected", *, error: str | None = None
    ) -> None:
        """Move ``record`` to its partition's dead-letter stream now, with ``reason`` (a
        short label, e.g. ``bad-schema``: ConfigError otherwise) and optionally ``error``,
        free text such as the exception (kept up to 1 KiB, see :attr:`DeadLetter.error
        <partitions._admin.deadletter.DeadLetter.error>`)."""
        self._enter()
        self._fetcher.drive(self._flow.dead_letter(record, reason, error))

    # -- positions --------------------------------------------------------------------------
    def seek(self, topic: str, partition: int, to: str | int) -> None:
        """Read an owned partition from ``to``: 'earliest', 'latest', an entry id (reading
        continues after it) or a timestamp in epoch ms (reading starts at that time).

        The group's pending entries of that partition are forgotten; records buffered but
        not handed out are dropped. NotOwnerError if this member does not own it."""
        self._enter()
        self._fetcher.drive(self._flow.seek(TopicPartition(topic, partition), target_id(to)))

    def position(self) -> dict[TopicPartition, str | None]:
        """Per owned partition, the id of the last record handed out (None: none yet)."""
        self._fetcher.drive(self._flow.sync())
        return {tp: st.last_id for tp, st in sorted(self.assignment_state.parts.items())}

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns and reads now."""
        self._fetcher.drive(self._flow.sync())
        return set(self.assignment_state.parts)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what was processed, release the partitions, leave the group, stop."""
        if self._closed:
            return
        self._thread_id = threading.get_ident()
        try:
            self._fetcher.drive(self._flow.close())
        finally:
            self._closing = True
            self._fetcher.wake()
            self._flow.events.release_all()
            self._runner.close()  # revokes what is left on this thread, then leaves
            self._closed = True
            if self._metrics is not None:
                self._metrics.close()
            self._flow.events.release_all()
            self._fetcher.close()
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
        self._check_open()
        self._thread_id = threading.get_ident()

    def _revoke_here(self, revoked: set[TopicPartition]) -> bool:
        """During close the runner revokes on the consumer's own thread: apply it now."""
        if threading.get_ident() != self._thread_id:
            return False
        self._fetcher.drive(self._flow.revoke(revoked))
        return True
