"""``partstream bench consume``: the consumer against a plain redis-py read/ack loop.

``records`` keyed records are produced once (not measured) to one topic; then each side
reads all of them with a group of its own, so both read exactly the same entries:

* **partstream**: :class:`~partitions._consumer.consumer.Consumer` processes (``consumers``), each
  polling ``batch_size`` records (auto-commit acks them on the next poll);
* **partstream-asyncio**: the same with :class:`~partitions._consumer.aio.AsyncConsumer`,
  one event loop per process (``await poll()``);
* **redis-py**: ``XREADGROUP COUNT batch_size`` over all partition streams, each entry
  decoded into a :class:`~partitions._base.records.Record`, then one pipelined ``XACK`` per stream.

A side stops when the workers together have handled ``records`` records, after their last
acks. Latency here is the time of one poll / read call (ms), not an end-to-end figure.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from typing import Any

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.replies import read_reply_items, records_from_entries
from partitions._client.aio import connect_async
from partitions._client.config import ConsumerConfig, ProducerConfig
from partitions._consumer.aio import AsyncConsumer
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.bench.env import BenchServer, server_cpu_s
from partitions.bench.options import BenchOptions, make_chunks
from partitions.bench.stats import RunResult
from partitions.bench.workers import Counters, Progress, WorkerFn, WorkerOutput, run_workers

TOPIC = "cons"
# Seconds the group may take to settle (every consumer assigned) before the run starts.
SETTLE_S = 60.0


def prepare(server: BenchServer, ns: str, opts: BenchOptions) -> None:
    """Create the topic and produce the records both sides will read (not measured)."""
    with server.connect(ns) as conn:
        TopicAdmin(conn).create(TopicSpec(TOPIC, opts.partitions))
        chunks = make_chunks(opts, opts.records)
        cfg = ProducerConfig(batch_size=opts.batch_size, linger_ms=5.0)
        with Producer(conn, cfg) as producer:
            left, c = opts.records, 0
            while left > 0:
                chunk = chunks[c % len(chunks)][:left]
                for k, v in chunk:
                    producer.send(TOPIC, v, key=k)
                left -= len(chunk)
                c += 1


def _settled(admin: GroupAdmin, group: str, n: int, member_id: str, mine: set[Any]) -> bool:
    """The group is stable with ``n`` members, every partition has an owner, and this
    member reads exactly the partitions the group says it owns (fences claimed)."""
    try:
        d = admin.describe(group)
    except Exception:  # the group may not exist yet
        return False
    owned = {tp for tp, owner in d.owners().items() if owner == member_id}
    return (
        d.state == "stable"
        and len(d.members) == n
        and len(d.owners()) == sum(d.topics.values())
        and bool(owned)
        and owned == mine
    )


def _wait_stable(server: BenchServer, ns: str, group: str, consumer: Consumer, n: int) -> None:
    with server.connect(ns) as conn:
        admin = GroupAdmin(conn)
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            if _settled(admin, group, n, consumer.member_id, consumer.assignment()):
                return
            time.sleep(0.02)
    raise TimeoutError(f"group {group} did not settle with {n} members in {SETTLE_S:.0f}s")


async def _await_stable(
    server: BenchServer, ns: str, group: str, consumer: AsyncConsumer, n: int
) -> None:
    """:func:`_wait_stable` for the asyncio side: the same criterion, so both sides start
    measuring from the same state (not while partitions are still being granted)."""
    with server.connect(ns) as conn:
        admin = GroupAdmin(conn)
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            mine = await consumer.assignment()
            if await asyncio.to_thread(_settled, admin, group, n, consumer.member_id, mine):
                return
            await asyncio.sleep(0.02)
    raise TimeoutError(f"group {group} did not settle with {n} members in {SETTLE_S:.0f}s")


def consume_partstream(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: one Consumer polling until all workers together handled ``total`` records."""
    server, ns, opts, group, total, nworkers = arg
    conn = server.connect(ns)
    cfg = ConsumerConfig(fetch_count=opts.batch_size, max_poll_records=opts.batch_size)
    lat = array("d")
    perf = time.perf_counter
    consumer = Consumer(group, TOPIC, conn=conn, config=cfg)
    _wait_stable(server, ns, group, consumer, nworkers)
    ready()
    started = time.monotonic()
    mine = 0
    while counters.total() < total:
        t = perf()
        batch = consumer.poll(opts.batch_size, timeout=0.05)
        if batch:
            ms = (perf() - t) * 1000.0
            lat.append(ms)
            counters.latency(ms)
            mine += len(batch)
            counters.done(mine)
    consumer.commit()
    ended = time.monotonic()
    consumer.close()
    conn.close()
    return WorkerOutput(mine, started, ended, lat)


def consume_asyncio(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: one AsyncConsumer awaiting poll() until all workers handled ``total``."""
    return asyncio.run(_consume_asyncio(counters, ready, arg))


async def _consume_asyncio(counters: Counters, ready: Callable[[], None], arg: Any) -> WorkerOutput:
    server, ns, opts, group, total, nworkers = arg
    conn = await connect_async(server.client_config(ns))
    cfg = ConsumerConfig(fetch_count=opts.batch_size, max_poll_records=opts.batch_size)
    lat = array("d")
    perf = time.perf_counter
    consumer = await AsyncConsumer(conn, group, TOPIC, config=cfg).start()
    await _await_stable(server, ns, group, consumer, nworkers)
    ready()
    started = time.monotonic()
    mine = 0
    while counters.total() < total:
        t = perf()
        batch = await consumer.poll(opts.batch_size, timeout=0.05)
        if batch:
            ms = (perf() - t) * 1000.0
            lat.append(ms)
            counters.latency(ms)
            mine += len(batch)
            counters.done(mine)
    await consumer.commit()
    ended = time.monotonic()
    await consumer.close()
    await conn.aclose()
    return WorkerOutput(mine, started, ended, lat)


def consume_redis_py(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: XREADGROUP over all streams, decode into Records, pipelined XACK."""
    server, ns, opts, group, total, _ = arg
    conn = server.connect(ns)
    client = conn.client
    layout = TopicAdmin(conn).get(TOPIC).layout
    streams = {conn.keys.stream(layout, p): p for p in range(opts.partitions)}
    wanted = {s: ">" for s in streams}
    pipe = client.pipeline(transaction=False)
    name = f"c{index}"
    lat = array("d")
    perf = time.perf_counter
    client.ping()
    ready()
    started = time.monotonic()
    mine = 0
    while counters.total() < total:
        t = perf()
        reply = client.xreadgroup(group, name, wanted, count=opts.batch_size)
        got = 0
        for stream, entries in read_reply_items(reply):
            records = records_from_entries(TOPIC, streams[stream], entries)
            if records:
                pipe.xack(stream, group, *[r.id for r in records])
                got += len(records)
        if got:
            pipe.execute()
            ms = (perf() - t) * 1000.0
            lat.append(ms)
            counters.latency(ms)
            mine += got
            counters.done(mine)
    ended = time.monotonic()
    conn.close()
    return WorkerOutput(mine, started, ended, lat)


def run_partstream(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, group: str
) -> RunResult:
    return _run("partstream", consume_partstream, server, ns, opts, progress, group)


def run_asyncio(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, group: str
) -> RunResult:
    return _run("partstream-asyncio", consume_asyncio, server, ns, opts, progress, group)


def run_redis_py(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, group: str
) -> RunResult:
    with server.connect(ns) as conn:
        layout = TopicAdmin(conn).get(TOPIC).layout
        for p in range(opts.partitions):
            conn.client.xgroup_create(conn.keys.stream(layout, p), group, id="0")
    return _run("redis-py", consume_redis_py, server, ns, opts, progress, group)


def _run(
    name: str,
    fn: WorkerFn,
    server: BenchServer,
    ns: str,
    opts: BenchOptions,
    progress: Progress,
    group: str,
) -> RunResult:
    """One side in ``opts.consumers`` processes, with the server's CPU cost of the run."""
    args = [(server, ns, opts, group, opts.records, opts.consumers)] * opts.consumers
    with server.connect(ns) as conn:
        return run_workers(
            name,
            fn,
            args,
            opts.record_size,
            progress,
            timeout=_timeout(opts),
            expected=opts.records,
            server_cpu=lambda: server_cpu_s(conn),
        )


def _timeout(opts: BenchOptions) -> float:
    return max(120.0, opts.records / 2000.0)
