"""send()'s inline path for the common record against the accumulator's general path: the
same batches and the same bytes on the wire, without a server (the senders never run).

``Producer.send`` and ``AsyncProducer.send`` inline ``batch.kv_chunk`` and
``Accumulator.append``'s first case for a bytes key + value record; this fails if either copy
drifts from the functions it copies (every test runs on both producers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from partitions._admin.topics import TopicMeta, TopicSpec
from partitions._base.keys import Keys
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.wire import pack
from partitions._producer import aio
from partitions._producer import producer as producer_mod
from partitions._producer.accumulator import Accumulator
from partitions._producer.batch import KEY_VALUE_FIELDS, Batch, Route, encode_record

CONFIG = ProducerConfig(batch_size=5, linger_ms=60_000.0, buffer_records=10_000)


class _Idle:
    def __init__(self, *args: object) -> None:
        pass

    def join(self, timeout: float | None) -> None:
        pass


class _AsyncShell:
    """An AsyncProducer driven from plain code: each send() runs to its end on a loop of its
    own (the sender task never starts, as the threaded producer's senders never run)."""

    def __init__(self, producer: aio.AsyncProducer) -> None:
        self.inner = producer
        self._acc = producer._acc
        self._routes = producer._routes
        producer._start = lambda: None  # type: ignore[method-assign]

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(self.inner.send(*args, **kwargs))

    def on_refresh(self, refresh: Callable[[str], Route]) -> None:
        async def reread(topic: str) -> Route:
            return refresh(topic)

        self.inner._refresh = reread  # type: ignore[method-assign]


@pytest.fixture(params=["threaded", "asyncio"])
def producer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(producer_mod, "Sender", _Idle)
    conn: Any = SimpleNamespace(
        config=ClientConfig(), server=SimpleNamespace(replicas=0, has=lambda f: True),
        is_cluster=False, keys=Keys("paths"), client=SimpleNamespace(connection_pool=None),
    )  # fmt: skip
    p: Any
    if request.param == "threaded":
        p = producer_mod.Producer(conn, CONFIG)
        p.on_refresh = lambda refresh: monkeypatch.setattr(p, "_refresh", refresh)
    else:
        p = _AsyncShell(aio.AsyncProducer(conn, CONFIG))
    p._acc.pid = b"pid"
    p._routes["t"] = Route(TopicMeta(TopicSpec("t", 3), 0, 1), conn.keys)
    return p


def records() -> list[tuple[bytes, bytes]]:
    """Key and value lengths across the head tables' edges (255/256 key bytes, 2047/2048
    value bytes: the inline path's tables, then formatting), empty ones included."""
    out = []
    for i, (nk, nv) in enumerate(
        [(1, 100), (0, 0), (16, 0), (0, 7), (255, 2047), (256, 10), (3, 2048), (300, 5000)] * 3
    ):
        out.append(((b"k%d" % i * 200)[:nk], bytes([65 + i % 26]) * nv))
    return out


def batches(acc: Accumulator) -> list[Batch]:
    every = [*acc.ready, *acc.open.values()]
    return sorted(every, key=lambda b: (b.partition, b.created, id(b)))


def test_inline_send_makes_the_batches_and_bytes_of_the_general_path(
    producer: Any,
) -> None:
    route = producer._routes["t"]
    general = Accumulator(CONFIG, producer._acc.clock, new_id=lambda: b"pid")
    sent = []
    for key, value in records():
        future = producer.send("t", value, key=key)
        p, chunk, nargs = encode_record(route, value, key, None, None, None, 1 << 20)
        batch, index, _ = general.append(route, p, None, chunk, nargs)
        assert nargs == KEY_VALUE_FIELDS
        assert (future._batch.partition, future._index) == (batch.partition, index)
        sent.append((p, key, value))
    inline, other = batches(producer._acc), batches(general)
    assert [(b.partition, b.count, b.fields(), b.nbytes, b.sealed) for b in inline] == [
        (b.partition, b.count, b.fields(), b.nbytes, b.sealed) for b in other
    ]
    assert sum(b.count for b in inline) == len(sent)
    for a, b in zip(inline, other, strict=True):
        a.seq = b.seq = 7
        assert a.chunks == b.chunks
        assert a.packed_append() == b.packed_append()
        assert a.xadds() == b.xadds()
    # ... and those bytes are the commands themselves: one XADD per record, in order.
    for p in range(route.n):
        stream = route.stream_keys[p]
        want = b"".join(
            pack([b"XADD", stream, b"*", b"key", k, b"value", v]) for q, k, v in sent if q == p
        )
        assert b"".join(b.xadds() for b in inline if b.partition == p) == want


def test_record_bytes_are_the_encoded_fields(producer: Any) -> None:
    """A batch's ``nbytes`` (its byte limit, the bytes metric) is what its records' fields
    take as RESP, whichever path counted them."""
    for key, value in records():
        producer.send("t", value, key=key)
    for b in batches(producer._acc):
        fields = b"".join(
            pack([b"key", b.chunks[at + 2], b"value", b.chunks[at + 4]]).split(b"\r\n", 1)[1]
            for at in range(0, len(b.chunks), 6)
        )
        assert b.nbytes == len(fields)


def test_fields_are_counted_once_a_record_is_not_key_value(
    producer: Any,
) -> None:
    producer.send("t", b"v", key=b"k", partition=0)
    producer.send("t", b"v", key=b"k", headers={"h": "1"}, partition=0)
    producer.send("t", b"v", key=b"k", partition=0)
    batch = producer._acc.open[("t", 0)]
    assert batch.shapes is not None and batch.shapes[0] == batch.shapes[2] == KEY_VALUE_FIELDS
    assert batch.fields() == sum(batch.shapes) > 3 * KEY_VALUE_FIELDS
    head = batch.packed_append().split(b"\r\n", 1)[0]
    assert head == b"*%d" % (6 + 6 + batch.count + sum(batch.shapes))


def test_an_aged_route_is_re_read_once_a_common_record_opens_a_batch(producer: Any) -> None:
    """send()'s common record looks at its route's age when it opens a batch, not once per
    record: past the age, the next send() re-reads the topic before it queues anything."""
    old = producer._routes["t"]
    reads: list[Route] = []

    def refresh(topic: str) -> Route:
        reads.append(Route(old.meta, Keys("paths")))
        producer._routes[topic] = reads[-1]
        return reads[-1]

    producer.on_refresh(refresh)
    producer.send("t", b"v", key=b"k")  # opens a batch on a fresh route: kept
    assert producer._routes["t"] is old and not reads
    old.expires = 0.0
    producer.send("t", b"v", key=b"k")  # joins the open batch: the age is not looked at
    assert producer._routes["t"] is old
    producer.send("t", b"v", key=b"b")  # opens another partition's batch: dropped ...
    assert "t" not in producer._routes and not reads
    producer.send("t", b"v", key=b"k")  # ... and re-read by the next send()
    assert len(reads) == 1 and producer._routes["t"] is reads[0]
    producer.send("t", b"v", key=b"k", headers={"h": "1"})  # the general path: per record
    assert len(reads) == 1
    reads[0].expires = 0.0
    producer.send("t", b"v", key=b"k", headers={"h": "1"})
    assert len(reads) == 2
