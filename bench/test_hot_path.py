"""Micro-benchmarks of the per-record hot path (pytest-benchmark).

Run and save:  ``.venv/bin/pytest bench/test_hot_path.py --benchmark-only
--benchmark-json=bench/results/hot_path.json``. Under the normal test run
(``--benchmark-disable``) each runs once and checks its output.

* route + encode: ``Producer.send`` of 10,000 keyed records into open batches (nothing is
  sent while measured: the batches are larger than the run and linger is a minute);
* send + flush: the same records appended through the server (batch build, pipeline, ids);
* decode: an ``XREADGROUP`` reply of 16 x 1,000 entries, raw RESP bytes -> hiredis ->
  :class:`~partitions._base.records.Record` objects;
* record construction alone, from already parsed entries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.records import Record
from partitions._base.replies import read_reply_items, records_from_entries
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._producer.producer import Producer, RecordFuture
from partitions._producer.router import Router

N = 10_000
PARTITIONS = 16
KEYS = [b"key-%d" % (i % 1000) for i in range(N)]
VALUES = [(b"v%05d" % i) * 16 + b"0123" for i in range(N)]  # 100 bytes


@pytest.fixture(scope="module")
def conn(server_url: str) -> Iterator[Connection]:
    c = connect(ClientConfig(url=server_url, namespace="hot" + uuid.uuid4().hex[:10]))
    TopicAdmin(c).create(TopicSpec("hot", PARTITIONS))
    try:
        yield c
    finally:
        TopicAdmin(c).delete("hot")
        c.close()


def _send_all(producer: Producer) -> list[RecordFuture]:
    send = producer.send
    return [send("hot", v, key=k) for k, v in zip(KEYS, VALUES, strict=True)]


@pytest.mark.integration
def test_route_and_encode(benchmark: Any, conn: Connection) -> None:
    cfg = ProducerConfig(batch_size=100_000, linger_ms=60_000, buffer_records=200_000)
    producers: list[Producer] = []

    def setup() -> tuple[tuple[Producer], dict[str, Any]]:
        p = Producer(conn, cfg)
        producers.append(p)
        return (p,), {}

    futures = benchmark.pedantic(_send_all, setup=setup, rounds=10, iterations=1)
    for p in producers:
        p.close()
    router = Router(PARTITIONS)
    assert len(futures) == N
    first = futures[0].result(30)
    assert first.partition == router.for_key(KEYS[0])
    assert all(f.done() for f in futures)


@pytest.mark.integration
def test_send_and_flush(benchmark: Any, conn: Connection) -> None:
    cfg = ProducerConfig(batch_size=1000, linger_ms=5)
    with Producer(conn, cfg) as producer:

        def run() -> list[RecordFuture]:
            futures = _send_all(producer)
            producer.flush()
            return futures

        futures = benchmark.pedantic(run, rounds=5, iterations=1)
    metas = [f.result(0) for f in futures]
    router = Router(PARTITIONS)
    assert [m.partition for m in metas[:100]] == [router.for_key(k) for k in KEYS[:100]]
    assert len({(m.partition, m.id) for m in metas}) == N  # ids are unique per partition


def _xreadgroup_reply(per_stream: int = 1000) -> bytes:
    """The raw RESP2 bytes of an XREADGROUP reply over 16 streams."""
    out = [b"*%d\r\n" % PARTITIONS]
    for p in range(PARTITIONS):
        name = b"ps:t:{hot:%d}" % p
        out.append(b"*2\r\n$%d\r\n%b\r\n*%d\r\n" % (len(name), name, per_stream))
        for i in range(per_stream):
            eid = b"1700000000000-%d" % i
            k, v = KEYS[i], VALUES[i]
            out.append(
                b"*2\r\n$%d\r\n%b\r\n*4\r\n$3\r\nkey\r\n$%d\r\n%b\r\n$5\r\nvalue\r\n$%d\r\n%b\r\n"
                % (len(eid), eid, len(k), k, len(v), v)
            )
    return b"".join(out)


RAW = _xreadgroup_reply()


def _decode(raw: bytes) -> list[Record]:
    reader = hiredis.Reader()
    reader.feed(raw)
    reply = reader.gets()
    records: list[Record] = []
    for stream, entries in read_reply_items(reply):
        p = int(stream.rsplit(":", 1)[1].rstrip("}"))
        records += records_from_entries("hot", p, entries)
    return records


def test_batch_decode(benchmark: Any) -> None:
    records = benchmark(_decode, RAW)
    assert len(records) == PARTITIONS * 1000
    r = records[1001]
    assert (r.topic, r.partition, r.id) == ("hot", 1, "1700000000000-1")
    assert (r.key, r.value, r.headers) == (KEYS[1], VALUES[1], {})
    assert r.timestamp == 1700000000000


def test_record_construction(benchmark: Any) -> None:
    reader = hiredis.Reader()
    reader.feed(RAW)
    entries = read_reply_items(reader.gets())[0][1]
    records = benchmark(records_from_entries, "hot", 0, entries)
    assert len(records) == 1000
    assert [r.key for r in records[:3]] == KEYS[:3]
    assert records[-1].id == "1700000000000-999"
