"""``partstream bench e2e``: fixed-rate latency, producer process(es) to consumer process(es).

Each record carries the time it was *meant* to be sent (``t0 + i / rate``). A producer that
falls behind sends the late records at once but keeps their intended times, so a stall is
charged to every record it delayed (coordinated omission accounted for, as in HdrHistogram
and Kafka's perf tools). A consumer measures ``now - intended`` when it hands the record to
the application. Both sides use the same clock (``time.monotonic``, system-wide on Linux).

* **partstream**: Producer (``linger_ms``, default 0) -> Consumer.poll (auto-commit);
* **raw**: redis-py ``XADD`` per record (a pipeline for a late burst) -> ``XREADGROUP BLOCK``
  over all partition streams, decode, pipelined ``XACK``.
"""

from __future__ import annotations

import struct
import time
from array import array
from collections.abc import Callable
from typing import Any

from xxhash import xxh3_64_intdigest

from partitions._base.keys import TopicLayout
from partitions._base.replies import read_reply_items, records_from_entries
from partitions._client.config import ConsumerConfig, ProducerConfig
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.bench.consume import _wait_stable
from partitions.bench.env import BenchServer, server_cpu_s
from partitions.bench.options import BenchOptions, make_keys, make_values, split
from partitions.bench.stats import RunResult
from partitions.bench.workers import Counters, Progress, WorkerOutput, run_workers

_STAMP = struct.Struct("<d")
_unstamp = _STAMP.unpack_from


def _schedule(
    count: int, rate: float, send: Callable[[list[tuple[float, int]]], None]
) -> tuple[float, float]:
    """Call ``send`` with every record due (intended time, index), at ``rate`` records/s."""
    step = 1.0 / rate
    started = time.monotonic()
    i = 0
    while i < count:
        now = time.monotonic()
        due = min(count, int((now - started) / step) + 1)
        if due > i:
            send([(started + j * step, j) for j in range(i, due)])
            i = due
        else:
            time.sleep(max(0.0, started + i * step - time.monotonic()))
    return started, time.monotonic()


def produce_worker(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Producer role: ``count`` records at ``rate``; records nothing in the counters."""
    server, ns, opts, side, topic, count, rate = arg
    conn = server.connect(ns)
    keys = make_keys(opts.keys)
    pad = make_values(opts.record_size - _STAMP.size, 1, seed=index)[0]
    nk, n = len(keys), opts.partitions
    if side == "partstream":
        cfg = ProducerConfig(batch_size=opts.batch_size, linger_ms=opts.linger("e2e"))
        producer = Producer(conn, cfg)
        producer.send(topic, b"warm-up", key=b"warm-up").result(30)
        send = producer.send

        def emit(due: list[tuple[float, int]]) -> None:
            for t, j in due:
                send(topic, _STAMP.pack(t) + pad, key=keys[(j * 31 + index) % nk])

        ready()
        started, _ = _schedule(count, rate, emit)
        producer.close()  # flushes: the rate kept is the rate delivered
        ended = time.monotonic()
    else:
        client = conn.client
        # No topic is created for the raw side: the keys a new topic of that name would get.
        layout = TopicLayout.spread(topic, n)
        streams = [conn.keys.stream(layout, p) for p in range(n)]
        pipe = client.pipeline(transaction=False)

        def emit(due: list[tuple[float, int]]) -> None:
            target = client if len(due) == 1 else pipe
            for t, j in due:
                k = keys[(j * 31 + index) % nk]
                target.xadd(
                    streams[xxh3_64_intdigest(k) % n], {b"key": k, b"value": _STAMP.pack(t) + pad}
                )
            if target is pipe:
                pipe.execute()

        client.ping()
        ready()
        started, ended = _schedule(count, rate, emit)
    conn.close()
    return WorkerOutput(0, started, ended, array("d"), {"sent": count, "sent_s": ended - started})


def consume_worker(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Consumer role: hand records out until all consumers together saw ``total``."""
    server, ns, opts, side, topic, total, nconsumers, deadline_s = arg
    conn = server.connect(ns)
    lat = array("d")
    now = time.monotonic
    mine = 0
    if side == "partstream":
        cfg = ConsumerConfig(
            fetch_count=opts.batch_size, max_poll_records=opts.batch_size, block_ms=100
        )
        consumer = Consumer(f"e2e-{topic}", topic, conn=conn, config=cfg)
        _wait_stable(server, ns, f"e2e-{topic}", consumer, nconsumers)
        ready()
        started = now()
        while counters.total() < total and now() - started < deadline_s:
            batch = consumer.poll(opts.batch_size, timeout=0.1)
            if batch:
                t = now()
                for r in batch:
                    if r.value is None or len(r.value) < _STAMP.size:
                        continue  # the producer's warm-up record
                    ms = (t - _unstamp(r.value)[0]) * 1000.0
                    lat.append(ms)
                    counters.latency(ms)
                    mine += 1
                counters.done(mine)
        consumer.close()
    else:
        client = conn.client
        layout = TopicLayout.spread(topic, opts.partitions)
        streams = {conn.keys.stream(layout, p): p for p in range(opts.partitions)}
        group = f"e2e-{topic}"
        wanted = {s: ">" for s in streams}
        pipe = client.pipeline(transaction=False)
        ready()
        started = now()
        while counters.total() < total and now() - started < deadline_s:
            reply = client.xreadgroup(group, f"c{index}", wanted, count=opts.batch_size, block=100)
            t = now()
            for stream, entries in read_reply_items(reply):
                records = records_from_entries(topic, streams[stream], entries)
                for r in records:
                    ms = (t - _unstamp(r.value or b"")[0]) * 1000.0
                    lat.append(ms)
                    counters.latency(ms)
                pipe.xack(stream, group, *[r.id for r in records])
                mine += len(records)
            if len(pipe):
                pipe.execute()
                counters.done(mine)
    ended = now()
    conn.close()
    return WorkerOutput(mine, started, ended, lat)


def _worker(index: int, counters: Counters, ready: Callable[[], None], arg: Any) -> WorkerOutput:
    role, rest = arg
    fn = produce_worker if role == "produce" else consume_worker
    return fn(index, counters, ready, rest)


def run_side(
    side: str, server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str
) -> RunResult:
    """One side (``partstream`` or ``raw``): consumers first, then fixed-rate producers."""
    total = int(opts.rate * opts.duration)
    deadline = opts.duration + 60.0
    if side == "raw":
        with server.connect(ns) as conn:
            layout = TopicLayout.spread(topic, opts.partitions)
            for p in range(opts.partitions):
                conn.client.xgroup_create(
                    conn.keys.stream(layout, p), f"e2e-{topic}", id="$", mkstream=True
                )
    args: list[Any] = [
        ("consume", (server, ns, opts, side, topic, total, opts.consumers, deadline))
        for _ in range(opts.consumers)
    ]
    shares = split(total, opts.producers)
    args += [("produce", (server, ns, opts, side, topic, c, opts.rate * c / total)) for c in shares]
    with server.connect(ns) as conn:  # the server's CPU per record, as produce and consume
        res = run_workers(
            side, _worker, args, opts.record_size, progress, timeout=deadline + 30.0,
            expected=total, server_cpu=lambda: server_cpu_s(conn),
        )  # fmt: skip
    res.extra["sent"] = sum(res.extra.pop("sent", []))
    res.extra["lost"] = res.extra["sent"] - res.records
    # The rate the producers kept: records over the slowest one's time from its first send
    # to its last record delivered (a producer behind the schedule sends late, not less).
    slowest = max(res.extra.pop("sent_s", [0.0]))
    res.extra["kept_rate"] = res.extra["sent"] / slowest if slowest > 0 else 0.0
    # The run's span is the producers' (the consumers start before and wait after).
    return res
