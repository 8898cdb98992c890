"""A producer batch, the futures of its records and the per-topic route it is packed for.

A :class:`Batch` holds the records of one partition, each already encoded as the RESP field
arguments of its stream entry. :meth:`Batch.packed` makes them one atomic write in one of two
forms: ``MULTI``, a native ``XADD`` per record, ``FCALL commit`` (``commit.lua``: sequence
check, record, retention, or undo) and ``EXEC`` (:meth:`Batch.packed_multi`: what a batch of
several records costs the server is what native XADDs cost), or one ``FCALL append``
(``append.lua``: the records inside the script, for single records and for a node where the
library is not known to be loaded yet). Each record's :class:`RecordFuture` points into its
batch, so a record costs one small object, and all futures of a batch share its state. Used
by :mod:`partitions._producer.producer`.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from partitions._admin.topics import TopicMeta
from partitions._base.errors import ConfigError
from partitions._base.functions import function_name
from partitions._base.keys import Keys
from partitions._base.records import (
    Key,
    Value,
    check_size,
    encode_headers,
    encode_key,
    encode_value,
    entry_fields,
)
from partitions._client.wire import ASKING, NotSentError, bulk
from partitions._producer.router import Router

__all__ = [
    "CRLF",
    "KEY_COSTS",
    "KEY_HEADS",
    "KEY_VALUE_FIELDS",
    "KV_CHUNK",
    "MAX_BATCH_BYTES",
    "MULTI_MIN_RECORDS",
    "RECORD_SLOTS",
    "VALUE_COSTS",
    "VALUE_HEADS",
    "Batch",
    "NotSentError",
    "RecordFuture",
    "RecordMetadata",
    "Route",
    "encode_many",
    "encode_record",
    "futures_for",
    "kv_chunk",
    "multi_groups",
    "multi_replies",
    "new_future",
    "packed_multi",
    "record_bytes",
]

log = logging.getLogger("partstream.producer")

_APPEND = function_name("append").encode()
_FCALL_HEAD = b"$5\r\nFCALL\r\n$%d\r\n%s\r\n$1\r\n3\r\n" % (len(_APPEND), _APPEND)
_COMMIT = function_name("commit").encode()
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
# append.lua's header args between its three keys and the records: pid, seq, maxlen,
# retention_ms, safe, n (commit.lua takes fewer: packed_multi).
_HEADER_ARGS = 6
# The fields of the common record (key and value), and of one in append.lua's "f, fields" form.
KEY_VALUE_FIELDS = 4
_FOUR = b"$1\r\n4\r\n"
# A batch keeps its records as RESP pieces, RECORD_SLOTS a record, joined once when the batch
# is packed (one join of a whole batch in C, not one per record in send()): a record is
# (separator, fields..., padded with b"" to RECORD_SLOTS). The separator is b"" until packing
# writes each record's head there (append.lua's field count, or the XADD before it).
RECORD_SLOTS = 6
# A key + value record's fields as RESP, to fill with (len(key), key, len(value), value).
KV_CHUNK = b"$3\r\nkey\r\n$%d\r\n%b\r\n$5\r\nvalue\r\n$%d\r\n%b\r\n"
# The same as pieces: b"", KEY_HEADS[len(key)], key, VALUE_HEADS[len(value)], value, CRLF,
# for keys and values shorter than the tables (the shells' hot path); a record's bytes are
# then KEY_COSTS[len(key)] + VALUE_COSTS[len(value)], looked up instead of measured.
KEY_HEADS = [b"$3\r\nkey\r\n$%d\r\n" % n for n in range(256)]
VALUE_HEADS = [b"\r\n$5\r\nvalue\r\n$%d\r\n" % n for n in range(2048)]
CRLF = b"\r\n"
KEY_COSTS = [len(h) + n for n, h in enumerate(KEY_HEADS)]
VALUE_COSTS = [len(h) + n + len(CRLF) for n, h in enumerate(VALUE_HEADS)]
# A batch of at least this many records goes as MULTI + native XADDs + commit (below: one
# FCALL append, cheaper for the server when the per-batch calls outweigh the per-record ones).
MULTI_MIN_RECORDS = 4
# A MULTI to a single server holds whole batches of at most this many records together (a
# larger batch goes alone). The server serves nobody else while it runs an EXEC: a round of
# ~1,700 records in one MULTI held it 10.3 ms on Redis 7.0 (5.6 on Valkey), MULTIs of at
# most 1,024 records 3.8 ms (2.3); the server's cost per record did not move either way
# (callgrind within 1 %, bench/README.md "produce alternatives", third pass), and below it a
# round's fixed work (an FCALL, MULTI/EXEC) is shared by enough records.
MULTI_MAX_RECORDS = 1024
# Re-read topic metadata this often, to pick up added partitions and retention changes.
METADATA_MAX_AGE_S = 30.0
# Encoded bytes of one batch's records: a batch is closed before a record would pass this.
MAX_BATCH_BYTES = 4 * 1024 * 1024


class RecordMetadata(NamedTuple):
    """Where a record was appended."""

    topic: str
    partition: int
    id: str


class Batch:
    """Records of one partition sent together. Its futures share its outcome.

    ``deadline`` is when it stops being retried (``delivery_timeout_ms`` after it was opened),
    ``retry_at`` when it may be sent again, ``in_doubt`` whether an earlier attempt may have
    been appended although no reply came, ``last_error`` the error of its latest attempt.
    """

    __slots__ = (
        "ask", "attempts", "callbacks", "chunks", "count", "created", "deadline", "done",
        "error", "event", "ids", "in_doubt", "last_error", "nargs", "nbytes", "partition", "pid",
        "retry_at", "route", "sealed", "seq", "shapes", "taken_at", "topic",
    )  # fmt: skip

    def __init__(
        self, topic: str, partition: int, route: Route, now: float, deadline: float
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.route = route
        # Each record's field arguments as RESP pieces, RECORD_SLOTS a record (the separators
        # written when packed); ``shapes`` each record's field count once one is not key +
        # value (None until then), and ``nargs`` the fields of all of them from then on
        # (while ``shapes`` is None they are KEY_VALUE_FIELDS a record: nothing counts them).
        self.chunks: list[bytes] = []
        self.shapes: list[int] | None = None
        self.count = 0
        # Out of the accumulator's open batches (sealed, or abandoned): no record joins it.
        self.sealed = False
        self.nargs = 0
        self.nbytes = 0
        self.created = now
        self.deadline = deadline
        self.retry_at = 0.0
        self.taken_at = 0.0  # when the first batch of a round was drained: the round's start
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
        # Resolved; the Event a thread waits on is made only when one does (most batches
        # are never waited on: making one per batch cost a few % of a producer's CPU).
        self.done = False
        self.event: threading.Event | None = None
        self.callbacks: list[tuple[int, Callable[[RecordFuture], None]]] | None = None

    def packed(self, multi: bool) -> bytes:
        """The batch's write as RESP, after ``ASKING`` if a cluster redirected it:
        :func:`packed_multi` of this batch alone (``multi``) or one ``FCALL append``."""
        body = packed_multi([self]) if multi else self.packed_append()
        return ASKING + body if self.ask is not None else body

    def _keys(self) -> bytes:
        route, p = self.route, self.partition
        return bulk(route.stream_keys[p]) + bulk(route.seq_keys[p]) + bulk(route.groups_keys[p])

    def _args(self) -> bytes:
        """append.lua's six header arguments."""
        spec = self.route.meta.spec
        return (
            bulk(self.pid)
            + bulk(b"%d" % self.seq)
            + bulk(b"%d" % (spec.max_length or 0))
            + bulk(b"%d" % (spec.retention_ms or 0))
            + (b"$1\r\n1\r\n" if spec.safe_retention else b"$1\r\n0\r\n")
            + bulk(b"%d" % self.count)
        )

    def xadds(self) -> bytes:
        """One native ``XADD <stream> * <fields>`` per record."""
        pieces = self.chunks
        if self.shapes is None:  # every record key + value: the same head before each
            pieces[::RECORD_SLOTS] = [self.route.xadd_heads[self.partition]] * self.count
        else:
            mid = self.route.xadd_mids[self.partition]
            pieces[::RECORD_SLOTS] = [b"*%d\r\n%b" % (3 + nf, mid) for nf in self.shapes]
        return b"".join(pieces)

    def fields(self) -> int:
        """How many field arguments the records have together."""
        return self.nargs if self.shapes is not None else KEY_VALUE_FIELDS * self.count

    def records(self) -> bytes:
        """The records in append.lua's "f, fields" form (each record's field count first)."""
        pieces = self.chunks
        if self.shapes is None:
            pieces[::RECORD_SLOTS] = [_FOUR] * self.count
        else:
            pieces[::RECORD_SLOTS] = [bulk(b"%d" % nf) for nf in self.shapes]
        return b"".join(pieces)

    def packed_append(self) -> bytes:
        """One ``FCALL append`` with the records in the script's "f, fields" form."""
        return (
            b"*%d\r\n" % (6 + _HEADER_ARGS + self.count + self.fields())
            + _FCALL_HEAD
            + self._keys()
            + self._args()
            + self.records()
        )

    def complete(self, ids: list[bytes] | None, error: BaseException | None) -> None:
        self.ids = ids
        self.error = error
        self.chunks = []
        with _callback_lock:
            self.done = True
            if self.event is not None:
                self.event.set()
            callbacks, self.callbacks = self.callbacks, None
        for i, cb in callbacks or ():
            try:
                cb(new_future(RecordFuture, self, i))
            except Exception:
                log.exception("producer callback raised")

    def wait(self, timeout: float | None) -> bool:
        """Block until resolved (at most ``timeout`` seconds); whether it is."""
        if self.done:
            return True
        with _callback_lock:
            if self.done:
                return True
            if self.event is None:
                self.event = threading.Event()
            event = self.event
        return event.wait(timeout)


# Guards registering callbacks and waiters against a batch completing at the same moment;
# they are rare, so one lock for all batches costs nothing on the hot path.
_callback_lock = threading.Lock()


def packed_multi(batches: list[Batch]) -> bytes:
    """``MULTI``, each batch's native XADDs, one ``FCALL commit`` for them all, ``EXEC``
    (batches of distinct partitions, all of one producer id; on a cluster, of one slot: one
    batch). The commit takes the producer id once, then per batch its stream and sequence
    keys (and its groups key with safe retention) and three arguments: sequence, record
    count and the topic's retention as one argument (``commit.lua``)."""
    keys: list[bytes] = []
    args: list[bytes] = []
    nkeys = 0
    pid = batches[0].pid
    for b in batches:
        if b.pid != pid:  # multi_groups keeps one id a MULTI: the commit takes it once
            raise ValueError("one MULTI's batches must have one producer id")
        route = b.route
        keys.append(route.commit_keys[b.partition])
        args.append(b"$%d\r\n%d\r\n$%d\r\n%d\r\n%b" % (
            len(b"%d" % b.seq), b.seq, len(b"%d" % b.count), b.count, route.commit_retention
        ))  # fmt: skip
        nkeys += route.commit_nkeys
    commit = b"*%d\r\n$5\r\nFCALL\r\n$%d\r\n%b\r\n%b" % (
        4 + nkeys + 3 * len(batches), len(_COMMIT), _COMMIT, bulk(b"%d" % nkeys)
    )  # fmt: skip
    return b"".join(
        [
            _MULTI,
            *(b.xadds() for b in batches),
            commit,
            *keys,
            bulk(pid),
            *args,
            _EXEC,
        ]
    )


def multi_groups(batches: list[Batch], cap: int = MULTI_MAX_RECORDS) -> list[list[Batch]]:
    """``batches`` in order, as the groups one MULTI each carries: whole batches of one
    producer id and at most ``cap`` records together, a larger batch alone."""
    groups: list[list[Batch]] = []
    size = cap
    pid = None
    for b in batches:
        # One producer id a MULTI (the commit takes it once): a batch retried after the
        # producer took a new id keeps its old one, and goes in a MULTI of its own id.
        if size + b.count > cap or b.pid != pid:
            groups.append([])
            size = 0
            pid = b.pid
        groups[-1].append(b)
        size += b.count
    return groups


def multi_replies(batches: list[Batch]) -> int:
    """How many replies :func:`packed_multi` gets: MULTI's, a QUEUED per XADD and for the
    FCALL, and EXEC's."""
    return sum(b.count for b in batches) + 3


class RecordFuture:
    """The outcome of one :meth:`Producer.send`: resolves to :class:`RecordMetadata`.

    Made with ``RecordFuture()`` (or :func:`new_future`) and its two slots set: it has no
    ``__init__`` of its own, since a Python-level one costs more than the rest of making
    it, and ``object.__new__(RecordFuture)`` more than calling the class (~1,170
    instructions against ~880, callgrind), once per record in the shells' ``send()``."""

    __slots__ = ("_batch", "_index")
    _batch: Batch
    _index: int

    def done(self) -> bool:
        return self._batch.done

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Block until the record is appended; raise the error if it could not be."""
        b = self._batch
        if not b.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout}s")
        if b.error is not None:
            raise b.error
        assert b.ids is not None
        return RecordMetadata(b.topic, b.partition, b.ids[self._index].decode())

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._batch.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout}s")
        return self._batch.error

    def add_done_callback(self, fn: Callable[[RecordFuture], None]) -> None:
        """Call ``fn(future)`` from the sender thread once done (now if already done)."""
        b = self._batch
        with _callback_lock:
            if not b.done:
                if b.callbacks is None:
                    b.callbacks = []
                b.callbacks.append((self._index, fn))
                return
        fn(self)


_F = TypeVar("_F", bound=RecordFuture)


def new_future(cls: type[_F], batch: Batch, index: int) -> _F:
    """A future of ``cls`` for record ``index`` of ``batch``."""
    future = cls()
    future._batch = batch
    future._index = index
    return future


def futures_for(cls: type[_F], placed: list[tuple[Batch, int]]) -> list[_F]:
    """A future of ``cls`` for each ``(batch, index)``, made as the shells' ``send()`` make
    theirs (:class:`RecordFuture`)."""
    out: list[_F] = []
    for batch, index in placed:
        future = cls()
        future._batch = batch
        future._index = index
        out.append(future)
    return out


class Route:
    """Per-topic routing state cached by the producer."""

    __slots__ = (
        "commit_keys", "commit_nkeys", "commit_retention", "expires", "fetched", "for_key",
        "groups_keys", "meta", "modulo", "n", "open", "router", "seq_keys", "stream_keys", "topic",
        "tps", "xadd_heads", "xadd_mids",
    )  # fmt: skip

    def __init__(self, meta: TopicMeta, keys: Keys) -> None:
        self.meta = meta
        self.topic = meta.name
        self.router: Router = meta.spec.router()
        self.n = meta.partitions
        self.for_key = self.router.key_partitioner()
        # The partition count where a key's partition is xxh3(key) % n (the shells inline
        # that), else 0 (jump: through ``for_key``).
        self.modulo = self.n if self.router.routing == "modulo" else 0
        k = keys
        lay = meta.layout
        self.stream_keys = [k.stream(lay, p).encode() for p in range(self.n)]
        # Each partition's (topic, partition), the accumulator's key of its batches: made
        # once, not once per record.
        self.tps = [(self.topic, p) for p in range(self.n)]
        # The latest batch of each partition that send()'s common record went into: that
        # partition's open batch unless ``sealed`` (the accumulator's ``open`` decides; a
        # list index instead of a dict look-up by ``(topic, p)``, once per record).
        self.open: list[Batch | None] = [None] * self.n
        # "XADD <stream> *" of each partition: after a record's "*<args>" header (mids), and
        # with the header of a key + value record in front (heads).
        self.xadd_mids = [b"$4\r\nXADD\r\n%b$1\r\n*\r\n" % bulk(s) for s in self.stream_keys]
        self.xadd_heads = [b"*7\r\n" + m for m in self.xadd_mids]
        self.seq_keys = [k.seq(lay, p).encode() for p in range(self.n)]
        self.groups_keys = [k.stream_groups(lay, p).encode() for p in range(self.n)]
        # What ``commit.lua`` takes of each batch of the topic, made once: its keys as RESP
        # (the groups key only with safe retention, which reads it), how many, and the
        # topic's retention as one argument "<max length> <retention ms> <0|1>".
        spec = meta.spec
        safe = bool(spec.safe_retention)
        self.commit_nkeys = 3 if safe else 2
        self.commit_keys = [
            bulk(self.stream_keys[p]) + bulk(self.seq_keys[p])
            + (bulk(self.groups_keys[p]) if safe else b"")
            for p in range(self.n)
        ]  # fmt: skip
        self.commit_retention = bulk(
            b"%d %d %d" % (spec.max_length or 0, spec.retention_ms or 0, safe)
        )
        self.fetched = time.monotonic()
        # Due for a re-read after this (monotonic clock), to pick up added partitions and
        # retention changes: the shells compare it inline, once per record (Producer.send's
        # common record: once per batch it opens).
        self.expires = self.fetched + METADATA_MAX_AGE_S


def _explicit_partition(route: Route, partition: object) -> int:
    if isinstance(partition, int) and not isinstance(partition, bool) and 0 <= partition < route.n:
        return partition
    raise ConfigError(f"topic {route.meta.name} has partitions 0..{route.n - 1}, not {partition!r}")


def _general_form(
    key: bytes | None, value: bytes | None, headers: Mapping[str, str | bytes] | None
) -> tuple[bytes, int, int]:
    """A record with headers, or without key or value: (its fields as RESP, how many,
    record bytes)."""
    fields = entry_fields(key, value, encode_headers(headers))
    size = sum(len(f) for f in fields)
    return b"".join(bulk(f) for f in fields), len(fields), size


def encode_many(
    route: Route,
    records: Iterable[tuple[Value, Key]],
    encode: Callable[[Value, Key], tuple[Value, Key]] | None,
    max_bytes: int,
) -> list[tuple[int | None, tuple[bytes, ...], int]]:
    """:func:`encode_record` of each ``(value, key)`` of ``records`` (no headers, the
    partition by key), after the producer's serializers (``encode``): all of them checked and
    encoded before any is queued, so a bad one raises with nothing sent."""
    out = []
    for value, key in records:
        if encode is not None:
            value, key = encode(value, key)
        out.append(encode_record(route, value, key, None, None, None, max_bytes))
    return out


def kv_chunk(key: bytes, value: bytes) -> tuple[bytes, ...]:
    """A key + value record's pieces (``encode_record``; ``Producer.send`` has this body
    inlined, its hot path: change both together, tests/unit/test_producer_send_paths.py compares
    them)."""
    nk, nv = len(key), len(value)
    if nk < 256 and nv < 2048:
        return (b"", KEY_HEADS[nk], key, VALUE_HEADS[nv], value, CRLF)
    return (b"", b"$3\r\nkey\r\n$%d\r\n" % nk, key, b"\r\n$5\r\nvalue\r\n$%d\r\n" % nv, value, CRLF)


def record_bytes(pieces: tuple[bytes, ...]) -> int:
    """The encoded bytes of one record's pieces (a batch's ``nbytes`` counts them)."""
    return sum(map(len, pieces))


def encode_record(
    route: Route,
    value: Value,
    key: Key,
    headers: Mapping[str, str | bytes] | None,
    partition: int | None,
    region: str | None,
    max_bytes: int,
) -> tuple[int | None, tuple[bytes, ...], int]:
    """Check and encode one record for ``route``'s topic, as both producers' ``send()`` do:
    (its partition, None for a keyless one the sticky rule places; its entry's fields as RESP
    arguments, as :data:`RECORD_SLOTS` pieces; how many: :data:`KEY_VALUE_FIELDS` for key +
    value). Raises before anything
    is queued."""
    kb = key if type(key) is bytes else encode_key(key)
    vb = value if type(value) is bytes else encode_value(value)
    if partition is not None:
        p: int | None = _explicit_partition(route, partition)
    elif region is None and kb is not None:
        p = route.for_key(kb)
    else:
        p = route.router.route(kb, region)
    if headers is None and kb is not None and vb is not None:
        # The common key + value record: fields "key" and "value".
        chunk = kv_chunk(kb, vb)
        if len(kb) + len(vb) > max_bytes:
            check_size(len(kb) + len(vb), max_bytes)
        return p, chunk, KEY_VALUE_FIELDS
    fields, nargs, size = _general_form(kb, vb, headers)
    check_size(size, max_bytes)
    return p, (b"", fields, b"", b"", b"", b""), nargs
