"""The producer: keyed records batched per partition, appended in one pipeline per server node.

Guarantees:

* **Order per partition** (hence per key): a partition has at most one batch in flight, and a
  batch that must be retried is sent again before any later batch of its partition.
* **No silent duplicates** (``idempotent=True``, the default): each batch carries this
  producer's id and a per-partition sequence number; the append script drops a batch it has
  already appended and answers with the original ids. A retry after a timeout is safe.
* **Atomic batches**: one script call appends a whole batch (all or nothing: the script
  checks everything before its first write) and applies the topic's retention. A batch that
  fails fails only its own records, and never the next batch of its partition.
* **A time budget for failures** (Kafka's ``delivery.timeout.ms``): retriable errors (a
  restart, a failover, ``BUSY``, ``OOM``, ...) are retried with capped exponential back-off
  until ``delivery_timeout_ms``; only then do the futures fail, with the last error. See
  :mod:`partitions._producer.delivery`.
* **Back-pressure, never drops**: when ``buffer_records`` are unsent, :meth:`send` blocks up
  to ``block_timeout`` and then raises :class:`BufferFullError`.
* **Bounded calls**: a record's shape is checked in :meth:`send` (size, header count) and
  batches are closed by records and bytes (:mod:`partitions._producer.batch`), so no script or reply
  limit of the server can be reached.

Thread-safe: any number of threads may call :meth:`send` and :meth:`flush` concurrently. Two
background threads send the batches. The hot path does no per-record round trip: each record
is encoded once, straight into the RESP bytes of its batch's script call.

This class is the threaded shell: the decisions are the accumulator's
(:mod:`partitions._producer.accumulator`), the writes the sender's
(:mod:`partitions._producer.sender`); :class:`~partitions.AsyncProducer` drives the same two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType

from partitions._admin.topics import TopicAdmin
from partitions._base.errors import ClosedError
from partitions._base.records import Key, Value, check_size, encode_key
from partitions._base.serde import Serializer, encoder
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._producer.accumulator import Accumulator, complete
from partitions._producer.batch import (
    CRLF,
    KEY_COSTS,
    KEY_HEADS,
    KEY_VALUE_FIELDS,
    MAX_BATCH_BYTES,
    METADATA_MAX_AGE_S,
    VALUE_COSTS,
    VALUE_HEADS,
    RecordFuture,
    RecordMetadata,
    Route,
    encode_many,
    encode_record,
    futures_for,
    kv_chunk,
    new_future,
    record_bytes,
)
from partitions._producer.delivery import warn_unmet_durability
from partitions._producer.router import xxh3
from partitions._producer.sender import SENDERS, Sender
from partitions._telemetry.metrics import ClientMetrics, producer_metrics
from partitions._telemetry.tracing import TracerProvider, producer_tracer

# How long send() steps aside for a sender that may be waiting for the GIL, and how often at
# most (Producer._give_way).
GIVE_S = 0.0001
GIVE_EVERY_S = 0.001

__all__ = ["METADATA_MAX_AGE_S", "SENDERS", "Producer", "RecordFuture", "RecordMetadata"]


class Producer:
    """Sends records to topics. ``send()`` returns a :class:`RecordFuture`.

    Use as a context manager, or call :meth:`close` (which flushes) when done.

    ``metrics``: record the producer's client metrics there (:mod:`partitions._telemetry.metrics`),
    once per batch; ``tracing``: True (the global tracer provider) or a tracer provider, for
    a ``send`` span per record with its context in the record's headers
    (:mod:`partitions._telemetry.tracing`). Both off by default, at no cost.

    ``value_serializer`` / ``key_serializer``: a :class:`~partitions.Serializer` whose
    ``dumps`` gives the value's / key's bytes in :meth:`send` (a tombstone's None stays
    None); a value it cannot serialize raises SerializationError there, nothing queued.
    Without one, bytes go as given, str as UTF-8, anything else as JSON (orjson).
    """

    def __init__(
        self,
        conn: Connection | None = None,
        config: ProducerConfig | None = None,
        *,
        client_config: ClientConfig | None = None,
        metrics: ClientMetrics | None = None,
        tracing: bool | TracerProvider = False,
        value_serializer: Serializer | None = None,
        key_serializer: Serializer | None = None,
    ) -> None:
        self.config = config or ProducerConfig()
        self._encode = encoder(value_serializer, key_serializer)
        if conn is None:
            client_config = client_config or ClientConfig.from_env()
            self.config.check_against(client_config)
        else:
            self.config.check_against(conn.config)
        self._owns_conn = conn is None
        self._conn = conn or connect(client_config)
        warn_unmet_durability(self.config.durability, self._conn.server)
        self._admin = TopicAdmin(self._conn)
        self._routes: dict[str, Route] = {}
        self._metrics = producer_metrics(metrics)
        self._acc = Accumulator(
            self.config, time.monotonic, cluster=self._conn.is_cluster, metrics=self._metrics
        )
        # send() takes the bare lock (the Condition's own __enter__/__exit__ are Python-level
        # calls, measurable per record); waits and notifications go through the Conditions:
        # ``_cond`` for progress (flush() and a send() waiting for room), ``_work`` for the
        # senders (woken for work only, not each time records resolve).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._max_bytes = self.config.max_record_bytes
        self._give_at = 0.0  # (_give_way)
        if self._metrics is not None:
            self._metrics.track_buffer(lambda: self._acc.buffered)
        self._tracer = producer_tracer(tracing, self.producer_id)
        if self._tracer is not None:  # the untraced send() stays as it is
            self.send = self._traced_send  # type: ignore[method-assign]
        self._sender = Sender(self._acc, self._cond, self._work, self._conn)

    # -- public API -----------------------------------------------------------------------
    def send(
        self,
        topic: str,
        value: Value = None,
        key: Key = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        *,
        region: str | None = None,
    ) -> RecordFuture:
        """Queue one record; returns a future of (topic, partition, id).

        Raises at once, before anything is queued, on an unknown topic, a bad partition or
        region, a value that cannot be encoded (:class:`SerializationError`), a record over
        ``max_record_bytes`` (:class:`RecordTooLargeError`) or with more than
        ``records.MAX_HEADERS`` headers (:class:`InvalidRecordError`). The future fails only
        once ``delivery_timeout_ms`` ran out (or at once on an error no retry can fix).
        """
        route = self._routes.get(topic)
        if route is None:
            route = self._refresh(topic)
        if self._encode is not None:
            value, key = self._encode(value, key)
        if (
            type(value) is bytes
            and type(key) is bytes
            and headers is None
            and partition is None
            and region is None
        ):
            # The common record, what encode_record and acc.append do for it inline (the
            # calls, not their work, were most of a record's cost): routed by key, fields
            # "key" and "value", into its partition's open batch of such records. Its route's
            # age is looked at only when it opens a batch (below), not once per record.
            n = route.modulo
            p = xxh3(key) % n if n else route.for_key(key)
            nk, nv = len(key), len(value)
            if nk + nv > self._max_bytes:
                check_size(nk + nv, self._max_bytes)
            # batch.kv_chunk's body, inlined: calling it costs ~610 instructions a record of
            # ~10,200 (callgrind, bench/send_instructions.py caller, 8,000 vs 24,000); change
            # both together (tests/unit/test_producer_send_paths.py compares the two paths)
            if nk < 256 and nv < 2048:
                chunk: tuple[bytes, ...] = (b"", KEY_HEADS[nk], key, VALUE_HEADS[nv], value, CRLF)
                nbytes = KEY_COSTS[nk] + VALUE_COSTS[nv]
            else:
                chunk = kv_chunk(key, value)
                nbytes = record_bytes(chunk)
            acc = self._acc
            lock = self._lock
            give = woke = False
            lock.acquire()
            try:
                if acc.buffered >= acc.buffer_limit or acc.closed:
                    self._wait_for_room()
                batch = route.open[p]
                if (
                    batch is not None
                    and not batch.sealed
                    and batch.shapes is None
                    and (size := batch.nbytes + nbytes) <= MAX_BATCH_BYTES
                ):
                    # (Accumulator.append's first case, the same steps)
                    index = batch.count
                    batch.chunks.extend(chunk)
                    batch.count = count = index + 1
                    batch.nbytes = size
                    acc.buffered += 1
                    if count >= acc.batch_size or size >= MAX_BATCH_BYTES:
                        acc.seal(batch)
                        give = True
                        if route.tps[p] not in acc.inflight:
                            self._work.notify()
                            woke = True
                else:
                    batch, index, wake = acc.append(route, p, None, chunk, KEY_VALUE_FIELDS, nbytes)
                    route.open[p] = batch
                    if wake:
                        self._work.notify()
                        give = woke = True
                    if time.monotonic() > route.expires and self._routes.get(topic) is route:
                        # Re-read by the next send(), before it queues anything: a route
                        # is used at most a batch (linger_ms, batch_size) past its age.
                        del self._routes[topic]
            finally:
                lock.release()
            if give:
                self._give_way(woke)
            future = RecordFuture()  # (its docstring: why no __init__)
            future._batch = batch
            future._index = index
            return future
        if time.monotonic() > route.expires:
            route = self._refresh(topic)
        where, chunk, nargs = encode_record(route, value, key, headers, partition, region,
                                            self._max_bytes)  # fmt: skip
        acc = self._acc
        with self._lock:
            if acc.buffered >= acc.buffer_limit or acc.closed:
                self._wait_for_room()
            batch, index, wake = acc.append(route, where, region, chunk, nargs)
            if wake:
                self._work.notify()
        if wake:
            self._give_way(True)
        return new_future(RecordFuture, batch, index)

    def send_many(self, topic: str, records: Iterable[tuple[Value, Key]]) -> list[RecordFuture]:
        """Queue many records of one topic, each a ``(value, key)`` pair (the partition by key,
        a keyless one by the sticky rule; no headers): what :meth:`send` does for each, with
        one lock per part that fits the buffer instead of one per record, so cheaper per
        record. Every record is checked before any is queued (the errors :meth:`send`
        raises); waits for room like it. Returns their futures, in order."""
        if self._tracer is not None:  # a span per record: through send()
            return [self.send(topic, value, key=key) for value, key in records]
        route = self._routes.get(topic)
        if route is None or time.monotonic() > route.expires:
            route = self._refresh(topic)
        encoded = encode_many(route, records, self._encode, self._max_bytes)
        acc = self._acc
        futures: list[RecordFuture] = []
        at = 0
        while at < len(encoded):
            with self._lock:
                if acc.buffered >= acc.buffer_limit or acc.closed:
                    self._wait_for_room()
                placed, wake, at = acc.append_many(route, encoded, at)
                if wake:
                    self._work.notify()
            self._give_way(wake)
            futures += futures_for(RecordFuture, placed)
        return futures

    def _traced_send(
        self,
        topic: str,
        value: Value = None,
        key: Key = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        *,
        region: str | None = None,
    ) -> RecordFuture:
        """:meth:`send` inside a ``send`` span whose context the record's headers carry."""
        assert self._tracer is not None
        span, traced = self._tracer.start(topic, headers)
        try:
            future = Producer.send(self, topic, value, key, traced, partition, region=region)
        except BaseException as err:
            self._tracer.failed(span, err)
            raise
        self._tracer.queued(span, future)
        return future

    def validate(
        self,
        topic: str,
        value: Value = None,
        key: Key = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        *,
        region: str | None = None,
    ) -> int | None:
        """Run the checks :meth:`send` runs on a record, and raise as it would, without
        queuing anything. Returns the record's partition (None for a keyless record: its
        partition is picked when it is sent)."""
        route = self._routes.get(topic)
        if route is None or time.monotonic() > route.expires:
            route = self._refresh(topic)
        if self._encode is not None:
            value, key = self._encode(value, key)
        return encode_record(route, value, key, headers, partition, region, self._max_bytes)[0]

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now and wait for it. False if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        acc = self._acc
        with self._cond:
            acc.flushing += 1
            self._work.notify_all()
            try:
                while acc.buffered > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                acc.flushing -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the sender threads, and close the connection if this producer opened it.

        Records still undelivered when ``timeout`` runs out fail with :class:`ClosedError`
        (as Kafka's ``close(timeout)`` does); a batch on the wire then fails once its reply
        comes, unless that reply is a success.
        """
        with self._cond:
            if self._acc.closed:
                return
        delivered = self.flush(timeout)
        with self._cond:
            self._acc.closed = True
            abandoned = [] if delivered else self._acc.abandon()
            self._work.notify_all()
            self._cond.notify_all()
        complete(abandoned)
        self._sender.join(timeout)
        if self._metrics is not None:
            self._metrics.close()
        if self._owns_conn:
            self._conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def producer_id(self) -> str:
        return self._acc.pid.decode()

    def partition_for(self, topic: str, key: Key, region: str | None = None) -> int | None:
        """The partition a keyed record would go to (None for keyless)."""
        route = self._routes.get(topic) or self._refresh(topic)
        return route.router.route(encode_key(key), region)

    # -- internals ------------------------------------------------------------------------
    def _refresh(self, topic: str) -> Route:
        route = Route(self._admin.get(topic), self._conn.keys)
        self._routes[topic] = route
        return route

    def _give_way(self, woke: bool) -> None:
        """After a batch was sealed or a sender woken (``woke``): if a sender may be waiting
        for the GIL (woken for a round, or its round's replies arrived), step aside briefly.

        A thread that calls send() in a loop holds the GIL; a sender that wants it back (to
        pack a round, or to read replies, one GIL take per socket read) gets it only when
        the interpreter forces a switch, every ``sys.getswitchinterval()`` (5 ms), and the
        server idles meanwhile. At most one step aside per :data:`GIVE_EVERY_S`, of
        :data:`GIVE_S`: the sender runs its Python part in that time (bench/README.md,
        issue 18, session 11). Never while less than a batch is buffered: at a light load
        (records sent one by one, e.g. at 5,000/s with ``linger_ms=0``) nobody waits."""
        acc = self._acc
        if acc.buffered < acc.batch_size:
            return  # a light load: the caller is not the one holding the GIL
        now = time.monotonic()
        if now < self._give_at or not (woke or self._sender.replies_in()):
            return
        self._give_at = now + GIVE_EVERY_S
        time.sleep(GIVE_S)

    def _wait_for_room(self) -> None:
        """Called with the lock held while the buffer is full (or the producer closed)."""
        if self._acc.accepts():
            return
        timeout = self.config.block_timeout
        deadline = time.monotonic() + timeout
        while self._acc.full():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._acc.full_error()
            self._work.notify_all()
            self._cond.wait(remaining)
            if self._acc.closed:
                raise ClosedError("producer closed while send() waited for buffer space")
