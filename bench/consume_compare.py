"""Consume throughput: partstream's Consumer.poll vs a plain redis-py loop, in one run.

Both read the same N records (default 1,000,000 over 16 partitions, ~100-byte values) as
separate consumer groups, decode every entry into a record, and ack everything:

* baseline: ``XREADGROUP COUNT 1000`` over all partition streams in one call, each entry
  decoded to (id, key, value, headers), then one pipelined ``XACK`` per stream;
* partstream: ``Consumer.poll()`` with ``fetch_count=1000`` (one pipelined fenced read of all
  owned partitions per poll, the previous batch's acks riding along).

Usage: ``python bench/consume_compare.py [--url redis://127.0.0.1:6379] [-n 1000000]``
(default URL: $PARTSTREAM_URL, else the embedded server). Prints both rates per round
and the ratio of the best.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer

TOPIC = "bench"


def fill(conn: Connection, n: int, partitions: int) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, partitions))
    value = b"x" * 100
    with Producer(conn) as p:
        for i in range(n):
            p.send(TOPIC, value, key=b"key-%d" % (i % 10_000))


def baseline(conn: Connection, n: int, partitions: int, group: str = "raw") -> float:
    r = conn.client
    streams = [conn.keys.stream(TOPIC, p) for p in range(partitions)]
    for s in streams:
        r.xgroup_create(s, group, id="0")
    got = 0
    t0 = time.perf_counter()
    while got < n:
        reply = r.xreadgroup(group, "c", {s: ">" for s in streams}, count=1000)
        pipe = r.pipeline(transaction=False)
        for stream, entries in reply:
            records: list[Any] = []
            for raw_id, fields in entries:
                headers = {k[2:].decode(): v for k, v in fields.items() if k.startswith(b"h:")}
                records.append((raw_id.decode(), fields.get(b"key"), fields.get(b"value"), headers))
            got += len(records)
            pipe.xack(stream, group, *[rec[0] for rec in records])
        pipe.execute()
    return got / (time.perf_counter() - t0)


def partstream(conn: Connection, n: int, partitions: int, group: str = "ps") -> float:
    config = ConsumerConfig(fetch_count=1000, max_poll_records=1000 * partitions)
    with Consumer(group, TOPIC, conn=conn, config=config) as c:
        while len(c.assignment()) < partitions:
            c.poll(max_records=1, timeout=0.05)  # joined; the record is counted below
        got = sum(1 for _ in c.assignment_state.handed)
        t0 = time.perf_counter()
        while got < n:
            got += len(c.poll(timeout=1.0))
        c.poll(timeout=0)  # acks the last batch
        rate = got / (time.perf_counter() - t0)
    left = sum(
        conn.client.xpending(conn.keys.stream(TOPIC, p), group)["pending"]
        for p in range(partitions)
    )
    assert left == 0, f"{left} records left unacked"
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("-p", "--partitions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best of each")
    args = ap.parse_args()
    ns = "bench" + uuid.uuid4().hex[:8]
    conn = connect(ClientConfig.from_env(url=args.url, namespace=ns))
    try:
        print(f"server: {conn.server.describe()}")
        t0 = time.perf_counter()
        fill(conn, args.records, args.partitions)
        print(f"produced {args.records} records in {time.perf_counter() - t0:.1f} s")
        raws, ours = [], []
        for i in range(args.rounds):  # interleaved: load from other clients hits both
            raws.append(baseline(conn, args.records, args.partitions, f"raw{i}"))
            print(f"round {i + 1}: redis-py XREADGROUP COUNT 1000 + pipelined XACK: "
                  f"{raws[-1]:,.0f} records/s")  # fmt: skip
            ours.append(partstream(conn, args.records, args.partitions, f"ps{i}"))
            print(f"round {i + 1}: partstream Consumer.poll (fenced, acks piggy-backed): "
                  f"{ours[-1]:,.0f} records/s")  # fmt: skip
        raw, mine = max(raws), max(ours)
        print(f"best redis-py: {raw:,.0f} records/s; best partstream: {mine:,.0f} records/s")
        print(f"ratio partstream / redis-py: {mine / raw:.2f}x")
    finally:
        for key in conn.client.scan_iter(match=f"{ns}:*", count=1000):
            conn.client.delete(key)
        conn.close()


if __name__ == "__main__":
    main()
