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
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import redis.exceptions as rex
from xxhash import xxh3_64_intdigest as _xxh3

from partitions._admin.topics import TopicAdmin
from partitions._base.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
)
from partitions._base.functions import is_missing
from partitions._base.records import (
    Key,
    Value,
    check_size,
    encode_headers,
    encode_key,
    encode_value,
    entry_fields,
)
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._client.nodes import is_redirect, node_for_key, redirect
from partitions._producer.batch import (
    MAX_BATCH_BYTES,
    Batch,
    RecordFuture,
    RecordMetadata,
    Route,
    bulk,
    pipeline,
)
from partitions._producer.delivery import (
    DeliveryPolicy,
    closed_error,
    expiry_error,
    final_error,
    in_doubt,
    is_out_of_seq,
    unconfirmed_error,
    wait_commands,
    warn_unmet_durability,
)
from partitions._producer.router import StickyPartitioner
from partitions._telemetry.metrics import ClientMetrics, producer_metrics
from partitions._telemetry.tracing import TracerProvider, producer_tracer

__all__ = ["Producer", "RecordFuture", "RecordMetadata"]

log = logging.getLogger("partstream.producer")

# Sender threads per producer (see Producer.__init__).
SENDERS = 2

# Re-read topic metadata this often, to pick up added partitions and retention changes.
METADATA_MAX_AGE_S = 30.0

# Encoded bytes one round (one pipeline per node) takes at most, beyond its first batch: with
# two senders, a paused server buffers at most about twice this from one producer.
ROUND_BYTES = 64 * 1024 * 1024

# A resharding can answer MOVED, ASK and TRYAGAIN several times for one batch before its
# slot settles; these attempts come on top of ``ProducerConfig.retries`` on a cluster.
_CLUSTER_EXTRA_RETRIES = 20


def _explicit_partition(route: Route, partition: object) -> int:
    if isinstance(partition, int) and not isinstance(partition, bool) and 0 <= partition < route.n:
        return partition
    raise ConfigError(f"topic {route.meta.name} has partitions 0..{route.n - 1}, not {partition!r}")


def _general_form(
    key: bytes | None, value: bytes | None, headers: Mapping[str, str | bytes] | None
) -> tuple[bytes, int, int]:
    """A record with headers, or without key or value, in the script's "f, fields..." form:
    (RESP bytes, arguments, record bytes)."""
    fields = entry_fields(key, value, encode_headers(headers))
    size = sum(len(f) for f in fields)
    chunk = b"%b%b" % (bulk(b"%d" % len(fields)), b"".join(bulk(f) for f in fields))
    return chunk, 1 + len(fields), size


class Producer:
    """Sends records to topics. ``send()`` returns a :class:`RecordFuture`.

    Use as a context manager, or call :meth:`close` (which flushes) when done.

    ``metrics``: record the producer's client metrics there (:mod:`partitions._telemetry.metrics`),
    once per batch; ``tracing``: True (the global tracer provider) or a tracer provider, for
    a ``send`` span per record with its context in the record's headers
    (:mod:`partitions._telemetry.tracing`). Both off by default, at no cost.
    """

    def __init__(
        self,
        conn: Connection | None = None,
        config: ProducerConfig | None = None,
        *,
        client_config: ClientConfig | None = None,
        metrics: ClientMetrics | None = None,
        tracing: bool | TracerProvider = False,
    ) -> None:
        self.config = config or ProducerConfig()
        if conn is None:
            client_config = client_config or ClientConfig.from_env()
            self.config.check_against(client_config)
        else:
            self.config.check_against(conn.config)
        self._owns_conn = conn is None
        self._conn = conn or connect(client_config)
        self._policy = DeliveryPolicy.from_config(self.config)
        self._durability = self.config.durability
        warn_unmet_durability(self._durability, self._conn.server)
        self._admin = TopicAdmin(self._conn)
        self._pid = uuid.uuid4().hex[:16].encode() if self.config.idempotent else b""
        self._seqs: dict[tuple[str, int], int] = {}
        self._routes: dict[str, Route] = {}
        self._sticky = StickyPartitioner()
        # send() takes the bare lock (the Condition's own __enter__/__exit__ are Python-level
        # calls, measurable per record); waits and notifications go through the Condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open: dict[tuple[str, int], Batch] = {}
        self._ready: deque[Batch] = deque()
        self._buffered = 0
        self._flushing = 0
        self._closed = False
        self._linger = self.config.linger_ms / 1000.0
        self._timeout = self._policy.timeout
        self._batch_size = self.config.batch_size
        self._max_bytes = self.config.max_record_bytes
        # The latest retriable error per partition: what a batch that expired unsent reports.
        self._last_errors: dict[tuple[str, int], Exception] = {}
        # Partitions with a batch on the wire: a partition is never in two rounds at once, so
        # its batches are appended (and retried) strictly in order.
        self._inflight: set[tuple[str, int]] = set()
        self._metrics = producer_metrics(metrics)
        if self._metrics is not None:
            self._metrics.track_buffer(lambda: self._buffered)
        self._tracer = producer_tracer(tracing, self.producer_id)
        if self._tracer is not None:  # the untraced send() stays as it is
            self.send = self._traced_send  # type: ignore[method-assign]
        # Two senders: while one waits for the server to run its round, the other packs and
        # sends the next, so the server is not idle between rounds.
        self._senders = [
            threading.Thread(target=self._run, name=f"partstream-producer-{i}", daemon=True)
            for i in range(SENDERS)
        ]
        for t in self._senders:
            t.start()

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
        if route is None or time.monotonic() - route.fetched > METADATA_MAX_AGE_S:
            route = self._refresh(topic)
        kb = key if type(key) is bytes else encode_key(key)
        vb = value if type(value) is bytes else encode_value(value)
        if partition is not None:
            p: int | None = _explicit_partition(route, partition)
        elif region is None and kb is not None:
            p = _xxh3(kb) % route.n if route.modulo else route.router.for_key(kb)
        else:
            p = route.router.route(kb, region)
        if headers is None and kb is not None and vb is not None:
            size = len(kb) + len(vb)
            # The script's short form "0, key, value" for the common key+value record.
            chunk = b"$1\r\n0\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(kb), kb, len(vb), vb)
            nargs = 3
        else:
            chunk, nargs, size = _general_form(kb, vb, headers)
        if size > self._max_bytes:
            check_size(size, self._max_bytes)
        with self._lock:
            if self._closed:
                raise ClosedError("send() on a closed producer")
            if self._buffered >= self.config.buffer_records:
                self._wait_for_room()
            if p is None:
                first, last = route.router.range_for(region)
                p = self._sticky.partition(topic, region, first, last)
            nbytes = len(chunk)
            batch = self._open.get((topic, p))
            if batch is not None and batch.nbytes + nbytes > MAX_BATCH_BYTES:
                self._seal(batch)  # a call stays within MAX_BATCH_BYTES, or holds one record
                batch = None
            if batch is None:
                now = time.monotonic()
                batch = Batch(topic, p, route, now, now + self._timeout)
                self._open[(topic, p)] = batch
                if len(self._open) == 1:
                    self._cond.notify_all()
            index = batch.count
            batch.chunks.append(chunk)
            batch.count = index + 1
            batch.nargs += nargs
            batch.nbytes += nbytes
            self._buffered += 1
            if batch.count >= self._batch_size or batch.nbytes >= MAX_BATCH_BYTES:
                self._seal(batch)
        return RecordFuture(batch, index)

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
        if route is None or time.monotonic() - route.fetched > METADATA_MAX_AGE_S:
            route = self._refresh(topic)
        kb, vb = encode_key(key), encode_value(value)
        if partition is not None:
            p: int | None = _explicit_partition(route, partition)
        else:
            p = route.router.route(kb, region)
        if headers is None and kb is not None and vb is not None:
            size = len(kb) + len(vb)
        else:
            size = _general_form(kb, vb, headers)[2]
        check_size(size, self._max_bytes)
        return p

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now and wait for it. False if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._buffered > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the sender threads, and close the connection if this producer opened it.

        Records still undelivered when ``timeout`` runs out fail with :class:`ClosedError`
        (as Kafka's ``close(timeout)`` does); a batch on the wire then fails once its reply
        comes, unless that reply is a success.
        """
        with self._cond:
            if self._closed:
                return
        delivered = self.flush(timeout)
        with self._cond:
            self._closed = True
            abandoned: list[Batch] = []
            if not delivered:
                abandoned = [*self._ready, *self._open.values()]
                self._ready.clear()
                self._open.clear()
            self._cond.notify_all()
        for batch in abandoned:
            self._abandon(batch)
        with self._cond:
            self._buffered -= sum(b.count for b in abandoned)
            self._cond.notify_all()
        for t in self._senders:
            t.join(timeout)
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
        return self._pid.decode()

    def partition_for(self, topic: str, key: Key, region: str | None = None) -> int | None:
        """The partition a keyed record would go to (None for keyless)."""
        route = self._routes.get(topic) or self._refresh(topic)
        return route.router.route(encode_key(key), region)

    # -- internals ------------------------------------------------------------------------
    def _refresh(self, topic: str) -> Route:
        route = Route(self._admin.get(topic), self._conn)
        self._routes[topic] = route
        return route

    def _load_script(self) -> None:
        client = self._conn.client
        if self._conn.is_cluster:  # every primary it knows (a new or failed-over one lacks it)
            for node in client.get_primaries():
                self._conn.functions.load(client.get_redis_connection(node))
        else:
            self._conn.functions.load()

    def _wait_for_room(self) -> None:
        """Called with the lock held while the buffer is full."""
        timeout = self.config.block_timeout
        deadline = time.monotonic() + timeout
        while self._buffered >= self.config.buffer_records:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BufferFullError(
                    f"producer buffer full ({self.config.buffer_records} records unsent) for "
                    f"{timeout}s: the server is slow or unreachable"
                )
            self._cond.notify_all()
            self._cond.wait(remaining)
            if self._closed:
                raise ClosedError("producer closed while send() waited for buffer space")

    def _seal(self, batch: Batch) -> None:
        del self._open[(batch.topic, batch.partition)]
        self._ready.append(batch)
        self._sticky.rotate(batch.topic, batch.partition)
        self._cond.notify_all()

    def _take_round(self) -> tuple[list[Batch], list[Batch]]:
        """With the lock held: wait for batches to send, at most one per partition, or for
        unsent batches whose delivery timeout ran out. Returns (to send, expired)."""
        while True:
            now = time.monotonic()
            if self._flushing or self._closed:
                for batch in list(self._open.values()):
                    self._seal(batch)
            else:
                for batch in list(self._open.values()):
                    if now - batch.created >= self._linger:
                        self._seal(batch)
            wake: float | None = None
            if self._ready:
                taken: list[Batch] = []
                expired: list[Batch] = []
                rest: deque[Batch] = deque()
                # A partition is blocked by a batch on the wire, or by an earlier batch still
                # waiting (back-off, full round): its later batches never overtake.
                blocked = set(self._inflight)
                nbytes = 0
                for batch in self._ready:
                    tp = (batch.topic, batch.partition)
                    if batch.seq == 0 and now >= batch.deadline:
                        expired.append(batch)  # never sent: failing it cannot reorder anything
                        continue
                    if tp in blocked or batch.retry_at > now or nbytes >= ROUND_BYTES:
                        rest.append(batch)
                        # Wake for the end of a back-off, or to expire a batch never sent.
                        due = batch.retry_at if batch.retry_at > now else None
                        if batch.seq == 0:
                            due = batch.deadline
                        if due is not None and (wake is None or due < wake):
                            wake = due
                    else:
                        taken.append(batch)
                        nbytes += batch.nbytes
                    blocked.add(tp)
                self._ready = rest
                if taken or expired:
                    self._inflight.update((b.topic, b.partition) for b in taken)
                    return taken, expired
            if self._closed and not self._ready:
                return [], []
            timeout = None if wake is None else max(0.0, wake - now)
            if self._open:
                oldest = min(b.created for b in self._open.values())
                linger = max(0.0, oldest + self._linger - now)
                timeout = linger if timeout is None else min(timeout, linger)
            self._cond.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                batches, expired = self._take_round()
            if not batches and not expired:
                return
            for batch in expired:
                self._expire(batch)
            retry: list[Batch] = []
            if batches:
                try:
                    retry = self._send_round(batches)
                except Exception as err:  # a dead sender thread would hang every flush()
                    log.exception("producer sender failed a round")
                    retry = []
                    for batch in batches:
                        if batch.event.is_set():
                            continue
                        batch.in_doubt = True  # it may have been written before the failure
                        if self._retry(batch, err):
                            retry.append(batch)
                        else:
                            self._fail(batch, err)
            abandoned: list[Batch] = []
            with self._cond:
                if retry and self._closed:  # close() gave up waiting: nothing is retried now
                    abandoned, retry = retry, []
                done = sum(b.count for b in batches if b.event.is_set())
                self._buffered -= done + sum(b.count for b in expired)
                # Back in front before the partitions are free again: a retried batch goes
                # out before any later batch of its partition.
                for batch in reversed(retry):
                    self._ready.appendleft(batch)
                self._inflight.difference_update((b.topic, b.partition) for b in batches)
                self._cond.notify_all()
            if abandoned:
                for batch in abandoned:
                    self._abandon(batch)
                with self._cond:
                    self._buffered -= sum(b.count for b in abandoned)
                    self._cond.notify_all()

    def _send_round(self, batches: list[Batch]) -> list[Batch]:
        """Send one round (one pipeline per node); returns the batches to try again."""
        with self._lock:
            for batch in batches:
                if batch.seq == 0:
                    tp = (batch.topic, batch.partition)
                    batch.seq = self._seqs.get(tp, 0) + 1
                    batch.pid = self._pid
                    self._seqs[tp] = batch.seq
        retry: list[Batch] = []
        m = self._metrics
        for pool, group in self._by_node(batches):
            started = time.monotonic() if m is not None else 0.0
            waits = wait_commands(self._durability, group, self._conn.config.socket_timeout)
            if waits:
                out = pipeline(pool, group, waits)
                replies, confirms = out[: len(group)], out[len(group) :]
            else:
                replies, confirms = pipeline(pool, group), []
            done = time.monotonic() if m is not None else 0.0
            unconfirmed = unconfirmed_error(self._durability, group, replies, waits, confirms)
            for batch, reply in zip(group, replies, strict=True):
                if isinstance(reply, list) and unconfirmed is not None:
                    # Appended on the primary, not confirmed by its replicas: in doubt. Sent
                    # again (same sequence: the script answers with the ids it appended) until
                    # confirmed or the delivery timeout; after a failover that lost it, the
                    # retry appends it on the new primary.
                    batch.in_doubt = True
                    reply = unconfirmed
                if isinstance(reply, list):
                    if m is not None:  # before the futures resolve: a done future is counted
                        m.sent(batch, done - started, done)
                    batch.complete(
                        reply[1:] if reply[0] == 1 else self._dup_ids(batch, reply),
                        None,
                    )
                    if self._last_errors:
                        self._last_errors.pop((batch.topic, batch.partition), None)
                elif self._retry(batch, reply):
                    retry.append(batch)
                else:
                    self._fail(batch, reply)
        return retry

    def _dup_ids(self, batch: Batch, reply: list[Any]) -> list[bytes]:
        ids: list[bytes] = reply[1:]
        log.info("dropped a retried duplicate batch on %s/%d", batch.topic, batch.partition)
        if len(ids) != batch.count:  # the original batch was trimmed meanwhile
            ids += [b"0-0"] * (batch.count - len(ids))
        return ids

    def _retry(self, batch: Batch, err: Exception) -> bool:
        """Decide on a failed attempt: True (and when, in ``batch.retry_at``) to send it again."""
        now = time.monotonic()
        batch.last_error = err
        batch.in_doubt = batch.in_doubt or in_doubt(err)
        if is_missing(err):
            # A server without this version's functions (restarted empty, a new or promoted
            # primary, an upgrade): load them if this user may; nothing was executed.
            self._reload_script()
        else:
            batch.attempts += 1
            if self._conn.is_cluster and (
                is_redirect(err) or isinstance(err, rex.ConnectionError | rex.TimeoutError)
            ):
                # MOVED updates the slot map; ASK sends the next attempt to the importing
                # node (with ASKING); the rest refresh the map. A redirection executed
                # nothing, so the sequence number stays and the script drops a real duplicate.
                batch.ask = redirect(self._conn, err)
        extra = _CLUSTER_EXTRA_RETRIES if self._conn.is_cluster else 0
        at = self._policy.next_try(err, batch.attempts, now, batch.deadline, extra)
        if at is None:
            return False
        batch.retry_at = at
        if self._metrics is not None:
            self._metrics.retried(batch)
        self._last_errors[(batch.topic, batch.partition)] = err
        log.debug(
            "retrying %s/%d (attempt %d) in %.3fs: %s %s",
            batch.topic,
            batch.partition,
            batch.attempts,
            at - now,
            type(err).__name__,
            err,
        )
        return True

    def _reload_script(self) -> None:
        try:
            if self._conn.is_cluster:  # a node restarted, failed over or joined
                self._conn.client.nodes_manager.initialize()
            self._load_script()
        except Exception:  # not ours to load, or an outage: the next attempt backs off
            log.debug("loading the server-side functions failed", exc_info=True)

    def _fail(self, batch: Batch, err: Exception) -> None:
        """Fail a batch that was sent, and keep the partition's sequence usable for the next."""
        if self._metrics is not None:
            self._metrics.failed(batch)
        batch.complete(None, final_error(batch, err, time.monotonic()))
        if not self.config.idempotent:
            return
        tp = (batch.topic, batch.partition)
        with self._lock:
            if batch.pid != self._pid:
                return  # its identity was replaced already; the new one starts afresh
            if batch.in_doubt or in_doubt(err) or is_out_of_seq(err):
                # The batch may be in the stream (or the server forgot the sequence): a new
                # identity, so the next batch can be neither taken for a duplicate of it nor
                # refused as out of sequence.
                self._pid = uuid.uuid4().hex[:16].encode()
                self._seqs.clear()
            elif self._seqs.get(tp) == batch.seq:
                # Refused: the script wrote nothing (it is all-or-nothing), so the server still
                # expects this sequence number; the next batch of the partition takes it.
                self._seqs[tp] = batch.seq - 1

    def _expire(self, batch: Batch) -> None:
        """Fail a batch never sent within its delivery timeout, with its partition's last error."""
        last = self._last_errors.get((batch.topic, batch.partition))
        if self._metrics is not None:
            self._metrics.failed(batch)
        batch.complete(None, expiry_error(batch, last, self.config.delivery_timeout_ms))

    def _abandon(self, batch: Batch) -> None:
        if self._metrics is not None:
            self._metrics.failed(batch)
        batch.complete(None, closed_error(batch))

    def _by_node(self, batches: list[Batch]) -> list[tuple[Any, list[Batch]]]:
        if not self._conn.is_cluster:
            return [(self._conn.client.connection_pool, batches)]
        groups: dict[int, tuple[Any, list[Batch]]] = {}
        for batch in batches:
            node = batch.ask or node_for_key(self._conn, batch.route.stream_keys[batch.partition])
            entry = groups.get(id(node))
            if entry is None:
                entry = groups[id(node)] = (node.connection_pool, [])
            entry[1].append(batch)
        return list(groups.values())
