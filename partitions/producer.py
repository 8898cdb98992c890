"""The producer: keyed records batched per partition, appended in one pipeline per server node.

Guarantees:

* **Order per partition** (hence per key): a partition has at most one batch in flight, and a
  batch that must be retried is sent again before any later batch of its partition.
* **No silent duplicates** (``idempotent=True``, the default): each batch carries this
  producer's id and a per-partition sequence number; the append script drops a batch it has
  already appended and answers with the original ids. A retry after a timeout is safe.
* **Atomic batches**: one script call appends a whole batch (all or nothing) and applies
  the topic's retention.
* **Back-pressure, never drops**: when ``buffer_records`` are unsent, :meth:`send` blocks up
  to ``block_timeout`` and then raises :class:`BufferFullError`.

Thread-safe: any number of threads may call :meth:`send` and :meth:`flush` concurrently. One
background thread sends the batches. The hot path does no per-record round trip: each record
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

from coordinator.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    LibraryMissingError,
    PartstreamError,
    translate,
)
from coordinator.functions import is_missing
from partitions.batch import Batch, RecordFuture, RecordMetadata, Route, bulk
from partitions.config import ClientConfig, ProducerConfig
from partitions.connection import Connection, connect
from partitions.nodes import is_redirect, node_for_key, redirect
from partitions.records import (
    Key,
    Value,
    check_size,
    encode_headers,
    encode_key,
    encode_value,
    entry_fields,
)
from partitions.router import StickyPartitioner
from partitions.topics import TopicAdmin

__all__ = ["Producer", "RecordFuture", "RecordMetadata"]

log = logging.getLogger("partstream.producer")

# Sender threads per producer (see Producer.__init__).
SENDERS = 2

# Re-read topic metadata this often, to pick up added partitions and retention changes.
METADATA_MAX_AGE_S = 30.0

_ASKING = b"*1\r\n$6\r\nASKING\r\n"
# A resharding can answer MOVED, ASK and TRYAGAIN several times for one batch before its
# slot settles; these attempts come on top of ``ProducerConfig.retries`` on a cluster.
_CLUSTER_EXTRA_RETRIES = 20


class Producer:
    """Sends records to topics. ``send()`` returns a :class:`RecordFuture`.

    Use as a context manager, or call :meth:`close` (which flushes) when done.
    """

    def __init__(
        self,
        conn: Connection | None = None,
        config: ProducerConfig | None = None,
        *,
        client_config: ClientConfig | None = None,
    ) -> None:
        self.config = config or ProducerConfig()
        self._owns_conn = conn is None
        self._conn = conn or connect(client_config)
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
        self._batch_size = self.config.batch_size
        self._batch_bytes = 4 * 1024 * 1024
        self._max_bytes = self.config.max_record_bytes
        # Partitions with a batch on the wire: a partition is never in two rounds at once, so
        # its batches are appended (and retried) strictly in order.
        self._inflight: set[tuple[str, int]] = set()
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

        Raises at once, before anything is written, on an unknown topic, a bad partition or
        region, a value that cannot be encoded or a record over ``max_record_bytes``.
        """
        route = self._routes.get(topic)
        if route is None or time.monotonic() - route.fetched > METADATA_MAX_AGE_S:
            route = self._refresh(topic)
        kb = key if type(key) is bytes else encode_key(key)
        vb = value if type(value) is bytes else encode_value(value)
        if partition is not None:
            if (
                isinstance(partition, bool)
                or not isinstance(partition, int)
                or not 0 <= partition < route.n
            ):
                raise ConfigError(
                    f"topic {topic} has partitions 0..{route.n - 1}, not {partition!r}"
                )
            p: int | None = partition
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
            fields = entry_fields(kb, vb, encode_headers(headers))
            size = sum(len(f) for f in fields)
            chunk = b"%b%b" % (bulk(b"%d" % len(fields)), b"".join(bulk(f) for f in fields))
            nargs = 1 + len(fields)
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
            batch = self._open.get((topic, p))
            if batch is None:
                batch = Batch(topic, p, route, time.monotonic())
                self._open[(topic, p)] = batch
                if len(self._open) == 1:
                    self._cond.notify_all()
            index = batch.count
            batch.chunks.append(chunk)
            batch.count = index + 1
            batch.nargs += nargs
            batch.nbytes += len(chunk)
            self._buffered += 1
            if batch.count >= self._batch_size or batch.nbytes >= self._batch_bytes:
                self._seal(batch)
        return RecordFuture(batch, index)

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
        """Flush, stop the sender thread, and close the connection if this producer opened it."""
        with self._cond:
            if self._closed:
                return
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._senders:
            t.join(timeout)
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

    def _take_round(self) -> list[Batch]:
        """With the lock held: wait for batches to send; at most one per partition."""
        while True:
            now = time.monotonic()
            if self._flushing or self._closed:
                for batch in list(self._open.values()):
                    self._seal(batch)
            else:
                for batch in list(self._open.values()):
                    if now - batch.created >= self._linger:
                        self._seal(batch)
            if self._ready:
                taken: list[Batch] = []
                seen = set(self._inflight)
                rest: deque[Batch] = deque()
                for batch in self._ready:
                    tp = (batch.topic, batch.partition)
                    if tp in seen:
                        rest.append(batch)
                    else:
                        seen.add(tp)
                        taken.append(batch)
                self._ready = rest
                if taken:
                    self._inflight.update((b.topic, b.partition) for b in taken)
                    return taken
            if self._closed:
                return []
            timeout = None
            if self._open:
                oldest = min(b.created for b in self._open.values())
                timeout = max(0.0, oldest + self._linger - now)
            self._cond.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                batches = self._take_round()
            if not batches:
                return
            try:
                retry = self._send_round(batches)
            except Exception as err:  # a dead sender thread would hang every flush()
                log.exception("producer sender failed a round")
                for batch in batches:
                    if not batch.event.is_set():
                        self._fail(batch, err)
                retry = []
            with self._cond:
                done = sum(b.count for b in batches if b.event.is_set())
                self._buffered -= done
                # Back in front before the partitions are free again: a retried batch goes
                # out before any later batch of its partition.
                for batch in reversed(retry):
                    self._ready.appendleft(batch)
                self._inflight.difference_update((b.topic, b.partition) for b in batches)
                self._cond.notify_all()
            if retry:
                time.sleep(self.config.retry_backoff_ms / 1000.0)

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
        for pool, group in self._by_node(batches):
            replies = self._pipeline(pool, group)
            for batch, reply in zip(group, replies, strict=True):
                if isinstance(reply, list):
                    batch.complete(
                        reply[1:] if reply[0] == 1 else self._dup_ids(batch, reply),
                        None,
                    )
                elif self._should_retry(batch, reply):
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

    def _should_retry(self, batch: Batch, err: Exception) -> bool:
        if is_missing(err):
            if self._conn.is_cluster:  # a node restarted, failed over or joined
                self._conn.client.nodes_manager.initialize()
            try:
                self._load_script()
            except LibraryMissingError:
                return False  # not ours to load: the batch fails, saying what to run
            return True  # not counted: nothing was executed
        if (
            isinstance(err, rex.ResponseError)
            and not is_redirect(err)
            and not isinstance(err, rex.OutOfMemoryError)
            and not str(err).startswith(("OOM", "LOADING", "BUSY "))
        ):
            return False
        if self._conn.is_cluster and (
            is_redirect(err) or isinstance(err, rex.ConnectionError | rex.TimeoutError | OSError)
        ):
            # MOVED updates the slot map; ASK sends the next attempt to the importing node
            # (with ASKING); the rest refresh the map. A redirection executed nothing, so the
            # sequence number stays and the append script still drops a real duplicate.
            batch.ask = redirect(self._conn, err)
        batch.attempts += 1
        log.debug(
            "retrying %s/%d (attempt %d): %s %s",
            batch.topic,
            batch.partition,
            batch.attempts,
            type(err).__name__,
            err,
        )
        return batch.attempts <= self.config.retries + (
            _CLUSTER_EXTRA_RETRIES if self._conn.is_cluster else 0
        )

    def _fail(self, batch: Batch, err: Exception) -> None:
        # A script error means the script refused before writing; a lost connection or a
        # timeout leaves the outcome unknown.
        in_doubt = not isinstance(err, rex.ResponseError)
        error = translate(err, f"appending to {batch.topic}/{batch.partition}")
        if is_redirect(err):
            error = ConnectionFailedError(
                f"appending to {batch.topic}/{batch.partition}: the cluster kept redirecting "
                f"({type(err).__name__} {err}) after {batch.attempts} attempts; is a "
                "resharding or failover stuck?"
            )
        out_of_seq = "OUTOFSEQ" in str(err)
        if out_of_seq:
            # The server lost this producer's sequence (a crash lost its last writes, or it
            # restarted empty): this batch was NOT appended and fails loudly; a new identity
            # lets later batches through instead of failing forever.
            error = PartstreamError(
                f"appending to {batch.topic}/{batch.partition}: {err} (the server lost recent "
                "writes; this batch was not appended)"
            )
        batch.complete(None, error)
        if (in_doubt or out_of_seq) and self.config.idempotent:
            # The failed batch may or may not be in the stream: start a new producer identity
            # so the next batch of this partition cannot be mistaken for a duplicate of it.
            with self._lock:
                self._pid = uuid.uuid4().hex[:16].encode()
                self._seqs.clear()

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

    def _pipeline(self, pool: Any, batches: list[Batch]) -> list[Any]:
        """Write all batches' commands at once, then read one reply per batch."""
        replies: list[Any] = []
        try:
            conn = pool.get_connection()
        except (rex.ConnectionError, rex.TimeoutError, OSError) as err:
            return [err] * len(batches)  # nothing was sent: retried like any lost connection
        try:
            # One buffer, one sendall: redis-py would otherwise write each item separately.
            conn.send_packed_command(
                [b"".join([(_ASKING if b.ask else b"") + b.packed() for b in batches])],
                check_health=False,
            )
            for batch in batches:
                try:
                    if batch.ask is not None:
                        batch.ask = None  # one attempt only: a later ASK says again
                        conn.read_response()  # +OK of ASKING
                    replies.append(conn.read_response())
                except rex.ResponseError as err:
                    replies.append(err)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as err:
            conn.disconnect()
            replies += [err] * (len(batches) - len(replies))
        finally:
            pool.release(conn)
        return replies
