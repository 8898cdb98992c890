"""Optional peers, run by ``--peers`` when their client library is installed: never needed by tests.

Development tooling of the source tree, not part of the installed package: ``partstream bench
--peers`` loads this file from the checkout it runs from (``partitions.bench.harness.load_peers``).

Install them with ``pip install 'partstream[peers]'``. Each peer handles the same keyed
records (same count, value size, keys, partitions) as partstream in the same run, and takes
part in the same alternating rounds, so ``partstream/<peer>`` is a ratio like the others:

* **nats-jetstream** (``nats-py``, server at ``PARTSTREAM_BENCH_NATS``, default
  ``nats://127.0.0.1:4222``): a stream over the subjects ``<prefix>.<partition>.<key>`` (the
  partition by the same xxh3 rule; the key travels in the subject, NATS's idiom), storage
  ``file`` (JetStream's default; ``PARTSTREAM_BENCH_NATS_STORAGE=memory`` for memory).
  Produce: ``js.publish_async`` with at most :func:`nats_inflight` acks in flight
  (``publish_async_max_pending``), then ``publish_async_completed``. Consume: a durable pull
  consumer (explicit acks, deliver all), ``fetch(batch_size)`` + ``msg.ack()`` per message.
  The stream is deleted after each run.
* **faststream-redis** (``faststream[redis]``, same server as partstream in that run): its
  fastest documented way to publish many messages to a stream is ``broker.publish(...,
  stream=..., pipeline=pipe)`` (one ``XADD`` per message queued in a redis-py pipeline,
  executed every ``batch_size``; it has no batch API for streams), the key in a header.
  Consume: one batch subscriber per partition stream (``StreamSub(batch=True,
  max_records=batch_size)`` in a consumer group: ``XREADGROUP COUNT`` + one ``XACK`` per
  batch). Logging is off (``logger=None``). Its streams live in the run's key namespace.

The client libraries are imported at run time (``importlib``), so this module type-checks
and imports without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xxhash import xxh3_64_intdigest

from partitions.bench.options import BenchOptions, iter_chunks, make_keys
from partitions.bench.stats import RunResult
from partitions.bench.workers import Counters, WorkerOutput, run_workers

if TYPE_CHECKING:
    from partitions.bench.harness import Bench
    from partitions.bench.output import BenchResult

NATS = "nats-jetstream"
FASTSTREAM = "faststream-redis"
# peer -> (module that must import, what to install)
PEERS = {NATS: ("nats", "nats-py"), FASTSTREAM: ("faststream.redis", "faststream[redis]")}
INSTALL_HINT = "pip install 'partstream[peers]'"

NATS_URL_ENV = "PARTSTREAM_BENCH_NATS"
NATS_STORAGE_ENV = "PARTSTREAM_BENCH_NATS_STORAGE"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

# A side of a round: run round r, get its measurement.
Side = Callable[[int], RunResult]


def nats_url() -> str:
    return os.environ.get(NATS_URL_ENV, DEFAULT_NATS_URL)


def nats_storage() -> str:
    storage = os.environ.get(NATS_STORAGE_ENV, "file")
    return storage if storage in ("file", "memory") else "file"


def nats_inflight(opts: BenchOptions) -> int:
    """Bound on unacknowledged async publishes: four producer batches."""
    return 4 * opts.batch_size


def installed(peer: str) -> bool:
    module = PEERS[peer][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _mod(name: str) -> Any:
    return importlib.import_module(name)


def _timeout(opts: BenchOptions) -> float:
    return max(120.0, opts.records / 2000.0)


def _partition(key: bytes, n: int) -> int:
    return int(xxh3_64_intdigest(key) % n)


def _shares(opts: BenchOptions) -> list[tuple[int, int]]:
    from partitions.bench.options import split

    shares = split(opts.records, opts.producers)
    return [(c, sum(shares[:i])) for i, c in enumerate(shares)]


# --- NATS JetStream ---------------------------------------------------------------------


def _nats_subjects(opts: BenchOptions, prefix: str) -> dict[bytes, str]:
    return {
        k: f"{prefix}.{_partition(k, opts.partitions)}.{k.decode()}" for k in make_keys(opts.keys)
    }


class NatsTarget:
    """One JetStream stream of the run: ``<ns>_<topic>`` over ``<ns>.<topic>.>``."""

    def __init__(self, ns: str, topic: str, opts: BenchOptions) -> None:
        self.stream = f"{ns}_{topic}"
        self.prefix = f"{ns}.{topic}"
        self.opts = opts
        self.url = nats_url()
        self.storage = nats_storage()

    async def _admin(self, fn: Callable[[Any], Any]) -> Any:
        nats = _mod("nats")
        nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    def probe(self) -> str:
        """The server's version; raises if it is unreachable or has no JetStream."""

        async def go(js: Any) -> str:
            await js.account_info()
            v = js._nc.connected_server_version
            return f"{v.major}.{v.minor}.{v.patch}"

        return str(asyncio.run(self._admin(go)))

    def create(self) -> None:
        api = _mod("nats.js.api")

        async def go(js: Any) -> None:
            with contextlib.suppress(Exception):  # not there: the usual case
                await js.delete_stream(self.stream)
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                storage=api.StorageType(self.storage),
            )

        asyncio.run(self._admin(go))

    def delete(self) -> None:
        async def go(js: Any) -> None:
            with contextlib.suppress(Exception):  # already gone
                await js.delete_stream(self.stream)

        asyncio.run(self._admin(go))

    def messages(self) -> int:
        async def go(js: Any) -> int:
            info = await js.stream_info(self.stream)
            return int(info.state.messages)

        return int(asyncio.run(self._admin(go)))

    def add_consumer(self, durable: str) -> None:
        api = _mod("nats.js.api")
        cfg = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            max_ack_pending=20 * self.opts.batch_size,
        )

        async def go(js: Any) -> None:
            await js.add_consumer(self.stream, cfg)

        asyncio.run(self._admin(go))

    def fill(self) -> None:
        """Publish the run's records once (not measured), for the consume rounds."""
        asyncio.run(self._publish(self.opts.records, 0, None, None))

    async def _publish(
        self,
        count: int,
        first: int,
        counters: Counters | None,
        ready: Callable[[], None] | None,
    ) -> WorkerOutput:
        nats = _mod("nats")
        opts = self.opts
        nc = await nats.connect(self.url, max_reconnect_attempts=0)
        js = nc.jetstream(publish_async_max_pending=nats_inflight(opts))
        subjects = _nats_subjects(opts, self.prefix)
        chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None
        lat = array("d")
        perf = time.perf_counter

        def sampled(sent: float) -> Callable[[Any], None]:
            def done(fut: Any) -> None:
                if fut.cancelled() or fut.exception() is not None:
                    return
                ms = (perf() - sent) * 1000.0
                lat.append(ms)
                if counters is not None:
                    counters.latency(ms)

            return done

        await nc.flush()
        if ready is not None:
            ready()
        started = time.monotonic()
        publish = js.publish_async
        done = 0
        for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
            k0, v0 = chunk[0]
            sent = perf()
            (await publish(subjects[k0], v0)).add_done_callback(sampled(sent))
            for k, v in chunk[1:]:
                await publish(subjects[k], v)
            done += len(chunk)
            if counters is not None:
                counters.done(done)
        await js.publish_async_completed()
        ended = time.monotonic()
        await nc.close()
        return WorkerOutput(count, started, ended, lat)


def _publish_worker(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    target, count, first = arg
    out: WorkerOutput = asyncio.run(target._publish(count, first, counters, ready))
    return out


def _nats_consume_worker(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    target, durable, total = arg
    out: WorkerOutput = asyncio.run(_nats_consume(target, durable, total, counters, ready))
    return out


async def _nats_consume(
    target: NatsTarget, durable: str, total: int, counters: Counters, ready: Callable[[], None]
) -> WorkerOutput:
    nats = _mod("nats")
    timeout_error = _mod("nats.errors").TimeoutError
    batch = target.opts.batch_size
    nc = await nats.connect(target.url, max_reconnect_attempts=0)
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(durable=durable, stream=target.stream)
    lat = array("d")
    perf = time.perf_counter
    ready()
    started = time.monotonic()
    mine = 0
    while counters.total() < total:
        t = perf()
        try:
            msgs = await psub.fetch(batch, timeout=0.2)
        except timeout_error:
            continue
        for m in msgs:
            # Decode like the other sides: key (from the subject), value.
            _record = (m.subject.rpartition(".")[2], m.data)
            await m.ack()
        ms = (perf() - t) * 1000.0
        lat.append(ms)
        counters.latency(ms)
        mine += len(msgs)
        counters.done(mine)
    await nc.flush()
    ended = time.monotonic()
    await nc.close()
    return WorkerOutput(mine, started, ended, lat)


# --- FastStream Redis -------------------------------------------------------------------


class FastStreamTarget:
    """The partition streams of one FastStream topic, inside the run's key namespace."""

    def __init__(self, url: str, ns: str, topic: str, opts: BenchOptions) -> None:
        self.url = url
        self.streams = [f"{ns}:fs:{topic}:{p}" for p in range(opts.partitions)]
        self.opts = opts

    def delete(self, client: Any) -> None:
        client.delete(*self.streams)

    def create_groups(self, client: Any, group: str) -> None:
        for s in self.streams:
            client.xgroup_create(s, group, id="0", mkstream=True)

    def fill(self) -> None:
        asyncio.run(self._publish(self.opts.records, 0, None, None))

    async def _publish(
        self,
        count: int,
        first: int,
        counters: Counters | None,
        ready: Callable[[], None] | None,
    ) -> WorkerOutput:
        fs = _mod("faststream.redis")
        opts = self.opts
        broker = fs.RedisBroker(self.url, logger=None)
        client = await broker.connect()
        pipe = client.pipeline(transaction=False)
        route = {k: self.streams[_partition(k, opts.partitions)] for k in make_keys(opts.keys)}
        headers = {k: {"key": k.decode()} for k in route}
        chunks = list(iter_chunks(opts, count, first)) if count <= 100_000 else None
        lat = array("d")
        perf = time.perf_counter
        pending: list[float] = []
        batch = opts.batch_size
        await client.ping()
        if ready is not None:
            ready()
        started = time.monotonic()
        publish = broker.publish
        done = queued = 0
        for chunk in chunks if chunks is not None else iter_chunks(opts, count, first):
            pending.append(perf())
            for k, v in chunk:
                await publish(v, stream=route[k], headers=headers[k], pipeline=pipe)
            queued += len(chunk)
            if queued >= batch:
                await pipe.execute()
                now = perf()
                for sent in pending:
                    ms = (now - sent) * 1000.0
                    lat.append(ms)
                    if counters is not None:
                        counters.latency(ms)
                pending.clear()
                queued = 0
            done += len(chunk)
            if counters is not None:
                counters.done(done)
        if queued:
            await pipe.execute()
            now = perf()
            lat.extend((now - sent) * 1000.0 for sent in pending)
        ended = time.monotonic()
        await broker.stop()
        return WorkerOutput(count, started, ended, lat)


def _fs_consume_worker(
    index: int, counters: Counters, ready: Callable[[], None], arg: Any
) -> WorkerOutput:
    target, group, total = arg
    out: WorkerOutput = asyncio.run(_fs_consume(index, target, group, total, counters, ready))
    return out


async def _fs_consume(
    index: int,
    target: FastStreamTarget,
    group: str,
    total: int,
    counters: Counters,
    ready: Callable[[], None],
) -> WorkerOutput:
    fs = _mod("faststream.redis")
    context = _mod("faststream").Context
    broker = fs.RedisBroker(target.url, logger=None)
    lat = array("d")
    perf = time.perf_counter
    mine = [0]
    last: dict[str, float] = {}

    def handler(stream: str) -> Callable[..., Any]:
        async def handle(body: Any, message: Any = context()) -> None:  # noqa: B008
            # Decode like the other sides: key (a header), value.
            headers = message.batch_headers
            _records = [(h.get("key"), v) for h, v in zip(headers, body, strict=True)]
            now = perf()
            ms = (now - last.get(stream, now)) * 1000.0
            lat.append(ms)
            counters.latency(ms)
            mine[0] += len(body)
            counters.done(mine[0])
            last[stream] = perf()

        return handle

    for s in target.streams:
        sub = fs.StreamSub(
            s, group=group, consumer=f"c{index}", batch=True, max_records=target.opts.batch_size
        )
        broker.subscriber(stream=sub)(handler(s))
    await broker.connect()
    ready()
    started = time.monotonic()
    for s in target.streams:
        last[s] = perf()
    await broker.start()
    while counters.total() < total:
        await asyncio.sleep(0.002)
    ended = time.monotonic()
    await broker.stop()
    return WorkerOutput(mine[0], started, ended, lat)


# --- wiring into the harness ------------------------------------------------------------


def _available(b: Bench, result: BenchResult) -> list[str]:
    """Peers that can run here; a note for each that cannot."""
    found: list[str] = []
    info: dict[str, Any] = {}
    for peer, (_, package) in PEERS.items():
        if not installed(peer):
            result.notes.append(f"peer {peer}: {package} not installed, skipped ({INSTALL_HINT})")
            continue
        if peer == NATS:
            try:
                version = NatsTarget(b.ns, "probe", b.opts).probe()
            except Exception as err:
                result.notes.append(
                    f"peer {peer}: no JetStream at {nats_url()} ({type(err).__name__}: {err}), "
                    "skipped"
                )
                continue
            info[peer] = {
                "url": nats_url(),
                "server_version": version,
                "storage": nats_storage(),
                "max_inflight_acks": nats_inflight(b.opts),
            }
        else:
            info[peer] = {"url": "same server as partstream", "publish": "pipeline"}
        found.append(peer)
    if info:
        result.extra["peers"] = info
    return found


def produce_sides(b: Bench, result: BenchResult) -> list[tuple[str, Side]]:
    """The peers' produce sides, to run in the rounds beside partstream's."""
    sides: list[tuple[str, Side]] = []
    opts = b.opts
    shares = _shares(opts)
    peers = _available(b, result)
    if NATS in peers:
        nats_target = NatsTarget(b.ns, "nprod", opts)

        def run_nats(_: int) -> RunResult:
            nats_target.create()
            try:
                got = run_workers(
                    NATS,
                    _publish_worker,
                    [(nats_target, c, f) for c, f in shares],
                    opts.record_size,
                    b.progress,
                    timeout=_timeout(opts),
                    expected=opts.records,
                )
                stored = nats_target.messages()
            finally:
                nats_target.delete()
            got.extra["storage"] = nats_target.storage
            if stored != opts.records:
                got.note = f"stream holds {stored} of {opts.records} records"
            return got

        sides.append((NATS, run_nats))
    if FASTSTREAM in peers:
        fs_target = FastStreamTarget(b.server.url, b.ns, "fprod", opts)

        def run_faststream(_: int) -> RunResult:
            try:
                return run_workers(
                    FASTSTREAM,
                    _publish_worker,
                    [(fs_target, c, f) for c, f in shares],
                    opts.record_size,
                    b.progress,
                    timeout=_timeout(opts),
                    expected=opts.records,
                )
            finally:
                with b.server.connect(b.ns) as conn:
                    fs_target.delete(conn.client)

        sides.append((FASTSTREAM, run_faststream))
    return sides


def consume_sides(
    b: Bench, result: BenchResult
) -> tuple[list[tuple[str, Side]], Callable[[], None]]:
    """The peers' consume sides (records produced once, now) and how to clean them up."""
    sides: list[tuple[str, Side]] = []
    cleanups: list[Callable[[], None]] = []
    opts = b.opts
    peers = _available(b, result)
    if NATS in peers:
        nats_target = NatsTarget(b.ns, "ncons", opts)
        b.say(f"  (setup: publishing {opts.records} records to JetStream)")
        nats_target.create()
        cleanups.append(nats_target.delete)
        nats_target.fill()

        def run_nats(r: int) -> RunResult:
            durable = f"c{r}"
            nats_target.add_consumer(durable)
            got = run_workers(
                NATS,
                _nats_consume_worker,
                [(nats_target, durable, opts.records)] * opts.consumers,
                opts.record_size,
                b.progress,
                timeout=_timeout(opts),
                expected=opts.records,
            )
            got.extra["storage"] = nats_target.storage
            return got

        sides.append((NATS, run_nats))
    if FASTSTREAM in peers:
        fs_target = FastStreamTarget(b.server.url, b.ns, "fcons", opts)
        b.say(f"  (setup: publishing {opts.records} records through FastStream)")
        fs_target.fill()

        def run_faststream(r: int) -> RunResult:
            group = f"fs{r}"
            with b.server.connect(b.ns) as conn:
                fs_target.create_groups(conn.client, group)
            return run_workers(
                FASTSTREAM,
                _fs_consume_worker,
                [(fs_target, group, opts.records)] * opts.consumers,
                opts.record_size,
                b.progress,
                timeout=_timeout(opts),
                expected=opts.records,
            )

        sides.append((FASTSTREAM, run_faststream))

    def cleanup() -> None:
        for fn in cleanups:
            fn()

    return sides, cleanup
