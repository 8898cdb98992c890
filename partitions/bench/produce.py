"""``partstream bench produce``: the producer against a redis-py loop and redis-benchmark.

All three write the same keyed records (``--records``, ``--record-size``, ``--keys``) over
the same number of partitions in the same run:

* **partstream**: :class:`~partitions.Producer` with ``batch_size`` and ``linger_ms``;
* **partstream-asyncio**: :class:`~partitions.AsyncProducer`, the same settings, on one event
  loop (target: at least :data:`~partitions.bench.harness.ASYNC_GOAL` of the threaded rate);
* **partstream-send-many**: the threaded producer fed 100 records a call with
  ``Producer.send_many`` (one lock per call instead of one per record);
* **redis-py**: the best plain loop: route each record with the same xxh3 rule, queue an
  ``XADD`` in a non-transactional pipeline, execute every ``batch_size`` records;
* **resp-pipeline**: the same loop hand-packed: each record's ``XADD`` encoded as RESP in the
  loop (the partition's ``XADD <stream> *`` head pre-encoded), ``batch_size`` of them written
  in one ``sendall`` and the replies read straight from hiredis (the wire writer's
  :func:`~partitions._client.wire.exchange_on`): what a skilled user gets from Python
  without any framework;
* **redis-benchmark**: pipelined ``XADD`` from the C tool, ``-P batch_size -c producers``
  over ``partitions`` streams: the machine's limit.

Every side also reports the server's CPU per record (``RunResult.server_us``: INFO cpu
before and after, :func:`~partitions.bench.env.server_cpu_s`), a figure that holds on a
noisy machine far better than wall time, and the worker processes' own CPU per record.

Latency is the time from handing a record to the client until its append is acknowledged,
sampled on one record in :data:`~partitions.bench.options.SAMPLE_EVERY`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import subprocess
import time
from array import array
from collections.abc import Callable
from typing import Any

from xxhash import xxh3_64_intdigest

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.aio import connect_async
from partitions._client.config import ProducerConfig
from partitions._client.wire import exchange_on
from partitions._producer.aio import AsyncProducer
from partitions._producer.producer import Producer
from partitions.bench.env import BenchServer, server_cpu_s
from partitions.bench.options import BenchOptions, iter_chunks, make_values, split
from partitions.bench.stats import Latency, RunResult
from partitions.bench.workers import Counters, Progress, WorkerOutput, run_workers

RAW_TOPIC = "raw"
PS_TOPIC = "ps"


def produce_partstream(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: send ``count`` records with the partstream producer (acks=1), then flush."""
    return _produce_partstream(counters, ready, arg, acks=1)


def produce_partstream_many(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: the same records through ``Producer.send_many``, one call per chunk of
    :data:`~partitions.bench.options.SAMPLE_EVERY` records (acks=1), then flush."""
    server, ns, opts, topic, count, first = arg
    conn = server.connect(ns)
    lat = array("d")
    sampled = _sampler(counters, lat)
    chunks = [[(v, k) for k, v in c] for c in iter_chunks(opts, count, first)]
    with Producer(conn, _config(opts, 1)) as producer:
        send_many = producer.send_many
        producer.send(topic, b"warm-up", key=b"warm-up").result(30)
        ready()
        started = time.monotonic()
        done = 0
        for chunk in chunks:
            send_many(topic, chunk)[0].add_done_callback(sampled())
            done += len(chunk)
            counters.done(done)
        producer.flush()
        ended = time.monotonic()
    conn.close()
    return WorkerOutput(count, started, ended, lat)


def produce_partstream_acks_all(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: the same with ``acks="all"``: a future resolves once WAIT confirmed the
    replica has its batch."""
    return _produce_partstream(counters, ready, arg, acks="all")


def _config(opts: BenchOptions, acks: int | str) -> ProducerConfig:
    return ProducerConfig(
        batch_size=opts.batch_size,
        linger_ms=opts.linger("produce"),
        buffer_records=max(200_000, 4 * opts.batch_size),
        acks=acks,
    )


def _sampler(counters: Counters, lat: array[float]) -> Callable[[], Callable[[Any], None]]:
    """A done-callback factory timing one record from now until its future resolves."""
    perf = time.perf_counter

    def sampled() -> Callable[[Any], None]:
        sent = perf()

        def done(_: Any) -> None:
            ms = (perf() - sent) * 1000.0
            lat.append(ms)
            counters.latency(ms)

        return done

    return sampled


def _produce_partstream(
    counters: Counters, ready: Callable[[], None], arg: Any, *, acks: int | str
) -> WorkerOutput:
    server, ns, opts, topic, count, first = arg
    conn = server.connect(ns)
    lat = array("d")
    sampled = _sampler(counters, lat)
    chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None
    with Producer(conn, _config(opts, acks)) as producer:
        send = producer.send
        send(topic, b"warm-up", key=b"warm-up").result(30)  # metadata + script cached
        ready()
        started = time.monotonic()
        done = 0
        for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
            k0, v0 = chunk[0]
            send(topic, v0, key=k0).add_done_callback(sampled())
            for k, v in chunk[1:]:
                send(topic, v, key=k)
            done += len(chunk)
            counters.done(done)
        producer.flush()
        ended = time.monotonic()
    conn.close()
    return WorkerOutput(count, started, ended, lat)


def produce_partstream_async(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: the same records with :class:`~partitions.AsyncProducer` (acks=1) on one
    event loop: ``await send()`` per record, then ``await flush()``."""
    return asyncio.run(_produce_async(counters, ready, arg))


async def _produce_async(counters: Counters, ready: Callable[[], None], arg: Any) -> WorkerOutput:
    server, ns, opts, topic, count, first = arg
    lat = array("d")
    sampled = _sampler(counters, lat)
    chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None
    async with (
        await connect_async(server.client_config(ns)) as conn,
        AsyncProducer(conn, _config(opts, 1)) as producer,
    ):
        send = producer.send
        await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")
        ready()
        started = time.monotonic()
        done = 0
        for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
            k0, v0 = chunk[0]
            (await send(topic, v0, key=k0)).add_done_callback(sampled())
            for k, v in chunk[1:]:
                await send(topic, v, key=k)
            done += len(chunk)
            counters.done(done)
        await producer.flush()
        ended = time.monotonic()
    return WorkerOutput(count, started, ended, lat)


def produce_redis_py(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: the plain redis-py loop: route, pipelined XADD, execute every batch."""
    server, ns, opts, topic, count, first = arg
    conn = server.connect(ns)
    n = opts.partitions
    layout = TopicAdmin(conn).get(topic).layout  # the topic's keys, as partstream's
    streams = [conn.keys.stream(layout, p).encode() for p in range(n)]
    pipe = conn.client.pipeline(transaction=False)
    lat = array("d")
    perf = time.perf_counter
    pending: list[float] = []
    batch = opts.batch_size
    chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None
    conn.client.ping()
    ready()
    started = time.monotonic()
    done = queued = 0
    for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
        pending.append(perf())
        for k, v in chunk:
            pipe.xadd(streams[xxh3_64_intdigest(k) % n], {b"key": k, b"value": v})
        queued += len(chunk)
        if queued >= batch:
            pipe.execute()
            now = perf()
            for sent in pending:
                ms = (now - sent) * 1000.0
                lat.append(ms)
                counters.latency(ms)
            pending.clear()
            queued = 0
        done += len(chunk)
        counters.done(done)
    if queued:
        pipe.execute()
        now = perf()
        lat.extend((now - sent) * 1000.0 for sent in pending)
    ended = time.monotonic()
    conn.close()
    return WorkerOutput(count, started, ended, lat)


def produce_resp(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    """Worker: hand-packed RESP XADDs, ``batch_size`` per write, replies read by hiredis."""
    server, ns, opts, topic, count, first = arg
    conn = server.connect(ns)
    n = opts.partitions
    layout = TopicAdmin(conn).get(topic).layout  # the topic's keys, as partstream's
    heads = []
    for p in range(n):
        stream = conn.keys.stream(layout, p).encode()
        heads.append(b"*7\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$1\r\n*\r\n$3\r\nkey\r\n" % (
            len(stream), stream))  # fmt: skip
    pool = conn.client.connection_pool
    link = pool.get_connection()
    lat = array("d")
    perf = time.perf_counter
    pending: list[float] = []
    parts: list[bytes] = []
    batch = opts.batch_size
    chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None

    def write() -> None:
        replies = exchange_on(link, [b"".join(parts)], len(parts))
        bad = next((r for r in replies if isinstance(r, Exception)), None)
        if bad is not None:
            raise bad
        parts.clear()

    exchange_on(link, [b"*1\r\n$4\r\nPING\r\n"], 1)
    ready()
    started = time.monotonic()
    done = 0
    for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
        pending.append(perf())
        for k, v in chunk:
            parts.append(b"%b$%d\r\n%b\r\n$5\r\nvalue\r\n$%d\r\n%b\r\n" % (
                heads[xxh3_64_intdigest(k) % n], len(k), k, len(v), v))  # fmt: skip
        if len(parts) >= batch:
            write()
            now = perf()
            for sent in pending:
                ms = (now - sent) * 1000.0
                lat.append(ms)
                counters.latency(ms)
            pending.clear()
        done += len(chunk)
        counters.done(done)
    if parts:
        write()
        now = perf()
        lat.extend((now - sent) * 1000.0 for sent in pending)
    ended = time.monotonic()
    pool.release(link)
    conn.close()
    return WorkerOutput(count, started, ended, lat)


def run_partstream(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = PS_TOPIC
) -> RunResult:
    return _run("partstream", produce_partstream, server, ns, opts, progress, topic)


def run_partstream_many(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = PS_TOPIC
) -> RunResult:
    """partstream's producer fed by ``send_many`` (a list of records a call)."""
    return _run("partstream-send-many", produce_partstream_many, server, ns, opts, progress,
                topic)  # fmt: skip


def run_partstream_acks_all(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = PS_TOPIC
) -> RunResult:
    """partstream's producer with acks="all" (WAIT for the replica after each round)."""
    return _run("partstream-acks-all", produce_partstream_acks_all, server, ns, opts, progress,
                topic)  # fmt: skip


def run_partstream_async(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = PS_TOPIC
) -> RunResult:
    """partstream's AsyncProducer, one event loop per producer process."""
    return _run("partstream-asyncio", produce_partstream_async, server, ns, opts, progress, topic)


def run_partstream_cluster(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = PS_TOPIC
) -> RunResult:
    """partstream's producer on a cluster: one pipeline per node per round."""
    return _run("partstream-cluster", produce_partstream, server, ns, opts, progress, topic)


def run_redis_py(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = RAW_TOPIC
) -> RunResult:
    return _run("redis-py", produce_redis_py, server, ns, opts, progress, topic)


def run_resp(
    server: BenchServer, ns: str, opts: BenchOptions, progress: Progress, topic: str = RAW_TOPIC
) -> RunResult:
    """The hand-packed RESP pipeline (see :func:`produce_resp`)."""
    return _run("resp-pipeline", produce_resp, server, ns, opts, progress, topic)


def _run(
    name: str,
    fn: Any,
    server: BenchServer,
    ns: str,
    opts: BenchOptions,
    progress: Progress,
    topic: str,
) -> RunResult:
    shares = split(opts.records, opts.producers)
    firsts = [sum(shares[:i]) for i in range(len(shares))]
    args = [(server, ns, opts, topic, c, f) for c, f in zip(shares, firsts, strict=True)]
    timeout = max(120.0, opts.records / 2000.0)
    with server.connect(ns) as conn:
        return run_workers(
            name, fn, args, opts.record_size, progress, timeout=timeout, expected=opts.records,
            server_cpu=lambda: server_cpu_s(conn),
        )  # fmt: skip


def create_topics(server: BenchServer, ns: str, opts: BenchOptions, *names: str) -> None:
    with server.connect(ns) as conn:
        admin = TopicAdmin(conn)
        for name in names:
            admin.create(TopicSpec(name, opts.partitions))


def delete_topics(server: BenchServer, ns: str, *names: str) -> None:
    with server.connect(ns) as conn:
        admin = TopicAdmin(conn)
        for name in names:
            admin.delete(name)


def run_redis_benchmark(server: BenchServer, ns: str, opts: BenchOptions) -> RunResult | None:
    """Pipelined XADD from ``redis-benchmark`` over ``partitions`` streams; None if absent."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    value = make_values(opts.record_size, 1)[0].decode()
    cmd = [
        exe,
        *server.redis_benchmark_args(),
        "-n",
        str(opts.records),
        "-P",
        str(opts.batch_size),
        "-c",
        str(opts.producers),
        "-r",
        str(opts.partitions),
        "--csv",
        "XADD",
        f"{ns}:rb:__rand_int__",
        "*",
        "key",
        "k__rand_int__",
        "value",
        value,
    ]
    with server.connect(ns) as conn:
        cpu0 = server_cpu_s(conn)
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        seconds = time.monotonic() - started
        run = _benchmark_result(proc, seconds, opts)
        run.server_cpu_s = server_cpu_s(conn) - cpu0
    return run


def _benchmark_result(
    proc: subprocess.CompletedProcess[str], seconds: float, opts: BenchOptions
) -> RunResult:
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    if proc.returncode != 0 or len(rows) < 2:
        return RunResult(
            "redis-benchmark",
            0,
            seconds,
            opts.record_size,
            Latency.of([]),
            note=f"failed: {(proc.stderr or proc.stdout).strip()[:200]}",
        )
    head, row = rows[0], rows[-1]
    data = dict(zip(head, row, strict=False))
    rps = float(data["rps"])
    lat = Latency(
        samples=0,
        avg=float(data.get("avg_latency_ms", 0)),
        max=float(data.get("max_latency_ms", 0)),
        p50=float(data.get("p50_latency_ms", 0)),
        p95=float(data.get("p95_latency_ms", 0)),
        p99=float(data.get("p99_latency_ms", 0)),
        p999=float(data.get("p99_latency_ms", 0)),
    )
    note = (
        f"C client, -P {opts.batch_size} -c {opts.producers}; latency per pipelined batch; "
        "p99.9 not reported (= p99)"
    )
    return RunResult(
        "redis-benchmark", opts.records, opts.records / rps, opts.record_size, lat, note=note
    )
