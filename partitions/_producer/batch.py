"""A producer batch, the futures of its records and the per-topic route it is packed for.

A :class:`Batch` holds the records of one partition, already encoded as the RESP arguments of
one ``append.lua`` call; :meth:`Batch.packed` prefixes the call's header. Each record's
:class:`RecordFuture` points into its batch, so a record costs one small object, and all
futures of a batch share one event. Used by :mod:`partitions._producer.producer`.

Every script call is bounded: a batch holds at most ``batch_size`` records (at most 100,000,
so the reply is at most that many ids) and is closed before a record would take it past
:data:`MAX_BATCH_BYTES`; a record larger than that (up to ``max_record_bytes``, at most
64 MiB) goes alone. A record has at most 1,000 headers (``records.MAX_HEADERS``). So a call
stays far below the server's ``proto-max-bulk-len`` (512 MB), its ``client-query-buffer-limit``
(1 GB) and Lua's ~8,000-slot C stack, whatever ``ProducerConfig`` allows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis.exceptions as rex

from partitions._admin.topics import TopicMeta
from partitions._base.functions import function_name
from partitions._client.connection import Connection
from partitions._producer.router import Router

log = logging.getLogger("partstream.producer")

_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_APPEND = function_name("append").encode()
_FCALL_HEAD = b"$5\r\nFCALL\r\n$%d\r\n%s\r\n$1\r\n3\r\n" % (len(_APPEND), _APPEND)
# Header args between the two keys and the records: pid, seq, maxlen, retention_ms, safe, n.
_HEADER_ARGS = 6
# Encoded bytes of one batch's records: a batch is closed before a record would pass this.
MAX_BATCH_BYTES = 4 * 1024 * 1024


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


class RecordMetadata(NamedTuple):
    """Where a record was appended."""

    topic: str
    partition: int
    id: str


class Batch:
    """Records of one partition sent together. Its futures share one event.

    ``deadline`` is when it stops being retried (``delivery_timeout_ms`` after it was opened),
    ``retry_at`` when it may be sent again, ``in_doubt`` whether an earlier attempt may have
    been appended although no reply came, ``last_error`` the error of its latest attempt.
    """

    __slots__ = (
        "ask", "attempts", "callbacks", "chunks", "count", "created", "deadline", "error",
        "event", "ids", "in_doubt", "last_error", "nargs", "nbytes", "partition", "pid",
        "retry_at", "route", "seq", "topic",
    )  # fmt: skip

    def __init__(
        self, topic: str, partition: int, route: Route, now: float, deadline: float
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.route = route
        self.chunks: list[bytes] = []
        self.count = 0
        self.nargs = 0
        self.nbytes = 0
        self.created = now
        self.deadline = deadline
        self.retry_at = 0.0
        self.in_doubt = False
        self.last_error: Exception | None = None
        self.seq = 0  # 0 until first sent
        self.pid = b""  # the producer id its sequence number belongs to (set with seq)
        self.attempts = 0
        # On a cluster: the importing node's client after an ASK, for the next attempt only.
        self.ask: Any = None
        # The server's ids, kept as bytes until a future asks: most are never read.
        self.ids: list[bytes] | None = None
        self.error: BaseException | None = None
        self.event = threading.Event()
        self.callbacks: list[tuple[int, Callable[[RecordFuture], None]]] | None = None

    def packed(self) -> bytes:
        spec = self.route.meta.spec
        route, p = self.route, self.partition
        head = (
            b"*%d\r\n" % (6 + _HEADER_ARGS + self.nargs)
            + _FCALL_HEAD
            + bulk(route.stream_keys[p])
            + bulk(route.seq_keys[p])
            + bulk(route.groups_keys[p])
            + bulk(self.pid)
            + bulk(b"%d" % self.seq)
            + bulk(b"%d" % (spec.max_length or 0))
            + bulk(b"%d" % (spec.retention_ms or 0))
            + (b"$1\r\n1\r\n" if spec.safe_retention else b"$1\r\n0\r\n")
            + bulk(b"%d" % self.count)
        )
        return head + b"".join(self.chunks)

    def complete(self, ids: list[bytes] | None, error: BaseException | None) -> None:
        self.ids = ids
        self.error = error
        self.chunks = []
        with _callback_lock:
            self.event.set()
            callbacks, self.callbacks = self.callbacks, None
        for i, cb in callbacks or ():
            try:
                cb(RecordFuture(self, i))
            except Exception:
                log.exception("producer callback raised")


class NotSentError(rex.ConnectionError):
    """No connection could be opened, so nothing of the call was written (never in doubt)."""


def pipeline(
    pool: Any, batches: list[Batch], waits: list[tuple[Any, ...]] | None = None
) -> list[Any]:
    """Write all batches' calls at once on one connection of ``pool``, then read one reply per
    batch: the script's reply, or the error that stands for it.

    An error reply is a refusal (nothing of that batch was written). A connection that breaks
    leaves the unread batches in doubt, except before anything was written
    (:class:`NotSentError`).

    ``waits`` (``acks="all"``: WAIT / WAITAOF) go in the same write, after the calls, so they
    cover what this connection just appended; their replies follow the batches' (fewer than
    ``waits`` if the connection broke before they were read).
    """
    replies: list[Any] = []
    confirms: list[Any] = []
    try:
        conn = pool.get_connection()
    except (rex.ConnectionError, rex.TimeoutError, OSError) as err:
        return [NotSentError(f"{type(err).__name__}: {err}")] * len(batches)
    try:
        # One buffer, one sendall: redis-py would otherwise write each item separately.
        tail = conn.pack_commands(waits) if waits else []
        conn.send_packed_command(
            [b"".join([(_ASKING if b.ask else b"") + b.packed() for b in batches]), *tail],
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
        for _ in waits or ():
            try:
                confirms.append(conn.read_response())
            except rex.ResponseError as err:
                confirms.append(err)
    except (rex.ConnectionError, rex.TimeoutError, OSError) as err:
        conn.disconnect()
        if isinstance(err, rex.BusyLoadingError):
            # redis-py drops the connection on a LOADING reply: that batch was refused, the
            # ones after it are unread, so in doubt.
            replies.append(err)
            err = rex.ConnectionError(f"connection dropped after a LOADING reply ({err})")
        replies += [err] * (len(batches) - len(replies))
    finally:
        pool.release(conn)
    return replies + confirms


# Guards registering callbacks against a batch completing at the same moment; callbacks are
# rare, so one lock for all batches costs nothing on the hot path.
_callback_lock = threading.Lock()


class RecordFuture:
    """The outcome of one :meth:`Producer.send`: resolves to :class:`RecordMetadata`."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return self._batch.event.is_set()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Block until the record is appended; raise the error if it could not be."""
        b = self._batch
        if not b.event.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout}s")
        if b.error is not None:
            raise b.error
        assert b.ids is not None
        return RecordMetadata(b.topic, b.partition, b.ids[self._index].decode())

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._batch.event.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout}s")
        return self._batch.error

    def add_done_callback(self, fn: Callable[[RecordFuture], None]) -> None:
        """Call ``fn(future)`` from the sender thread once done (now if already done)."""
        b = self._batch
        with _callback_lock:
            if not b.event.is_set():
                if b.callbacks is None:
                    b.callbacks = []
                b.callbacks.append((self._index, fn))
                return
        fn(self)


class Route:
    """Per-topic routing state cached by the producer."""

    __slots__ = (
        "fetched", "groups_keys", "meta", "modulo", "n", "router", "seq_keys", "stream_keys",
    )  # fmt: skip

    def __init__(self, meta: TopicMeta, conn: Connection) -> None:
        self.meta = meta
        self.router: Router = meta.spec.router()
        self.n = meta.partitions
        self.modulo = meta.spec.routing == "modulo"
        k = conn.keys
        self.stream_keys = [k.stream(meta.name, p).encode() for p in range(self.n)]
        self.seq_keys = [k.seq(meta.name, p).encode() for p in range(self.n)]
        self.groups_keys = [k.stream_groups(meta.name, p).encode() for p in range(self.n)]
        self.fetched = time.monotonic()
