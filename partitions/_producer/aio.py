"""The asyncio producer: the same accumulator and the same rounds as :class:`~partitions.Producer`,
driven from an event loop on ``redis.asyncio``.

Usage::

    async with AsyncProducer(conn, ProducerConfig(...)) as p:
        fut = await p.send("orders", b"...", key="customer-7")
        meta = await fut                      # RecordMetadata(topic, partition, id)
        await p.send_and_wait("orders", b"...", key="customer-7")
        await p.flush()

Guarantees: those of :class:`~partitions.Producer` (order per partition, idempotent batches,
atomic batches, ``acks``/WAIT, the delivery timeout and back-off, back-pressure), because the
decisions are the same objects' (:mod:`partitions._producer.accumulator`,
:func:`partitions._producer.sender.send_round`); only the I/O is awaited here.

Cancellation: a record is queued once :meth:`AsyncProducer.send` returns and is then
delivered (or fails) whatever happens to the tasks awaiting its future: cancelling such a
task (``task.cancel()``, ``asyncio.timeout``) cancels only its wait, never the record, and
never sends it twice. A ``send`` cancelled while it waits for buffer space queued nothing.

Not thread-safe: use one producer from one event loop. One background task sends the
batches, with at most two rounds on the wire at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from partitions._admin.topics import read_meta_async
from partitions._base.errors import ClosedError
from partitions._base.records import Key, Value, check_size
from partitions._base.serde import Serializer, encoder
from partitions._client.config import ProducerConfig
from partitions._client.nodes import aredirect, retriable
from partitions._client.wire import (
    CONNECTION_ERRORS,
    AsyncLink,
    Replies,
    aexchange,
    aexchange_on,
    is_connected,
)
from partitions._producer.accumulator import Accumulator, complete
from partitions._producer.batch import (
    CRLF,
    KEY_COSTS,
    KEY_HEADS,
    KEY_VALUE_FIELDS,
    MAX_BATCH_BYTES,
    VALUE_COSTS,
    VALUE_HEADS,
    Batch,
    RecordFuture,
    RecordMetadata,
    Route,
    encode_many,
    encode_record,
    futures_for,
    kv_chunk,
    record_bytes,
)
from partitions._producer.delivery import warn_unmet_durability
from partitions._producer.router import xxh3
from partitions._producer.sender import SENDERS, Driver, Exchange, Step, send_round
from partitions._telemetry.metrics import ClientMetrics, producer_metrics

if TYPE_CHECKING:
    from partitions._client.aio import AsyncConnection

__all__ = ["AsyncProducer", "AsyncRecordFuture"]


log = logging.getLogger("partstream.producer")

# send() gives the loop a turn at least this often (and whenever a batch seals).
YIELD_EVERY = 64


class AsyncRecordFuture(RecordFuture):
    """The outcome of one :meth:`AsyncProducer.send`: ``await`` it for :class:`RecordMetadata`.

    Awaiting it any number of times, from any number of tasks, is fine; cancelling a waiting
    task leaves the record alone. ``done()``, ``exception(0)`` and ``add_done_callback()``
    are :class:`RecordFuture`'s (callbacks run on the sender task).
    """

    __slots__ = ()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """The outcome now (never blocks the loop): RecordMetadata, or the record's error;
        InvalidStateError if the record is not resolved yet."""
        if not self.done():
            raise asyncio.InvalidStateError("the record is not delivered yet")
        return super().result(0)

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self._wait().__await__()

    async def _wait(self) -> RecordMetadata:
        if not self.done():
            # A future of this wait only: cancelling it cancels nothing else.
            waiter = asyncio.get_running_loop().create_future()

            def wake(_: RecordFuture) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.add_done_callback(wake)
            await waiter
        return self.result()


class AsyncProducer:
    """Sends records to topics from asyncio code. ``await send()`` gives an
    :class:`AsyncRecordFuture`; use as ``async with`` or ``await close()`` (which flushes).

    ``conn`` is an :class:`~partitions._client.aio.AsyncConnection` (``await
    connect_async()``); it stays open after :meth:`close`. ``metrics``, ``value_serializer``
    and ``key_serializer`` as for :class:`~partitions.Producer`.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        config: ProducerConfig | None = None,
        *,
        metrics: ClientMetrics | None = None,
        value_serializer: Serializer | None = None,
        key_serializer: Serializer | None = None,
    ) -> None:
        self.config = config or ProducerConfig()
        self._encode = encoder(value_serializer, key_serializer)
        self.config.check_against(conn.config)
        self._conn = conn
        warn_unmet_durability(self.config.durability, conn.server)
        self._metrics = producer_metrics(metrics)
        self._acc = Accumulator(
            self.config, time.monotonic, cluster=conn.is_cluster, metrics=self._metrics
        )
        if self._metrics is not None:
            self._metrics.track_buffer(lambda: self._acc.buffered)
        self._routes: dict[str, Route] = {}
        self._max_bytes = self.config.max_record_bytes
        self._links: dict[str, AsyncLink] = {}
        self._single = None if conn.is_cluster else AsyncLink(pool=conn.client.connection_pool)
        # The connections kept between back-to-back rounds on a single server (one a round
        # on the wire), given back to the pool when the sender task waits (_exchange_held).
        self._held: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._rounds: dict[asyncio.Task[None], list[Batch]] = {}
        self._wake = asyncio.Event()  # the sender has something to look at
        self._progress = asyncio.Event()  # replaced each time records resolve (a broadcast)
        self._since_yield = 0

    # -- public API -----------------------------------------------------------------------
    async def send(
        self,
        topic: str,
        value: Value = None,
        key: Key = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        *,
        region: str | None = None,
    ) -> AsyncRecordFuture:
        """Queue one record; returns its future. Raises as :meth:`Producer.send` does, before
        anything is queued; waits (up to ``block_timeout``) while the buffer is full."""
        route = self._routes.get(topic)
        if route is None:
            route = await self._refresh(topic)
        if self._encode is not None:
            value, key = self._encode(value, key)
        acc = self._acc
        if (
            type(value) is bytes
            and type(key) is bytes
            and headers is None
            and partition is None
            and region is None
        ):
            # The common record inline, as Producer.send does it (the same steps, in the same
            # order, without the lock; tests/unit/test_producer_send_paths.py compares both
            # with the general path): routed by key, into its partition's open batch.
            n = route.modulo
            p = xxh3(key) % n if n else route.for_key(key)
            nk, nv = len(key), len(value)
            if nk + nv > self._max_bytes:
                check_size(nk + nv, self._max_bytes)
            if nk < 256 and nv < 2048:
                chunk: tuple[bytes, ...] = (b"", KEY_HEADS[nk], key, VALUE_HEADS[nv], value, CRLF)
                nbytes = KEY_COSTS[nk] + VALUE_COSTS[nv]
            else:
                chunk = kv_chunk(key, value)
                nbytes = record_bytes(chunk)
            if (acc.buffered >= acc.buffer_limit or acc.closed) and not acc.accepts():
                await self._wait_for_room()
            if self._task is None:
                self._start()
            batch = route.open[p]
            wake = False
            if (
                batch is not None
                and not batch.sealed
                and batch.shapes is None
                and (size := batch.nbytes + nbytes) <= MAX_BATCH_BYTES
            ):
                index = batch.count
                batch.chunks.extend(chunk)
                batch.count = count = index + 1
                batch.nbytes = size
                acc.buffered += 1
                if count >= acc.batch_size or size >= MAX_BATCH_BYTES:
                    acc.seal(batch)
                    wake = route.tps[p] not in acc.inflight
            else:
                batch, index, wake = acc.append(route, p, None, chunk, KEY_VALUE_FIELDS, nbytes)
                route.open[p] = batch
                if time.monotonic() > route.expires and self._routes.get(topic) is route:
                    del self._routes[topic]  # re-read by the next send() (Producer.send)
        else:
            if time.monotonic() > route.expires:
                route = await self._refresh(topic)
            where, chunk, nargs = encode_record(route, value, key, headers, partition, region,
                                                self._max_bytes)  # fmt: skip
            if not acc.accepts():
                await self._wait_for_room()
            if self._task is None:
                self._start()
            batch, index, wake = acc.append(route, where, region, chunk, nargs)
        if wake:
            self._wake.set()
        self._since_yield += 1
        if wake or self._since_yield >= YIELD_EVERY:
            # Let the sender task run: a producer that awaits nothing but send() would
            # otherwise only buffer, and the sender's reads would wait for flush().
            self._since_yield = 0
            await asyncio.sleep(0)
        future = AsyncRecordFuture()  # (RecordFuture's docstring: why no __init__)
        future._batch = batch
        future._index = index
        return future

    async def send_many(
        self, topic: str, records: Iterable[tuple[Value, Key]]
    ) -> list[AsyncRecordFuture]:
        """Queue many ``(value, key)`` records of one topic, as :meth:`Producer.send_many`:
        every record checked before any is queued, one buffer check per part that fits it."""
        route = self._routes.get(topic)
        if route is None or time.monotonic() > route.expires:
            route = await self._refresh(topic)
        encoded = encode_many(route, records, self._encode, self._max_bytes)
        acc = self._acc
        futures: list[AsyncRecordFuture] = []
        at = 0
        while at < len(encoded):
            if not acc.accepts():
                await self._wait_for_room()
            if self._task is None:
                self._start()
            placed, wake, at = acc.append_many(route, encoded, at)
            futures += futures_for(AsyncRecordFuture, placed)
            if wake:
                self._wake.set()
            self._since_yield = 0
            await asyncio.sleep(0)  # let the sender task run (see send())
        return futures

    async def send_and_wait(
        self,
        topic: str,
        value: Value = None,
        key: Key = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        *,
        region: str | None = None,
    ) -> RecordMetadata:
        """:meth:`send` and wait for the record's outcome. Cancelled after ``send``, the
        record is still delivered."""
        future = await self.send(topic, value, key, headers, partition, region=region)
        return await future

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now and wait for it. False if ``timeout`` ran out."""
        acc = self._acc
        acc.flushing += 1
        self._wake.set()
        try:
            return await self._until(lambda: acc.buffered == 0, timeout)
        finally:
            acc.flushing -= 1

    async def close(self, timeout: float | None = 30.0) -> None:
        """Flush and stop the sender task. Records undelivered when ``timeout`` runs out fail
        with :class:`ClosedError`, as with :meth:`Producer.close`."""
        acc = self._acc
        if acc.closed:
            return
        delivered = await self.flush(timeout)
        acc.closed = True
        if not delivered:
            complete(acc.abandon())
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                await self._stop()
        if self._metrics is not None:
            self._metrics.close()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def producer_id(self) -> str:
        return self._acc.pid.decode()

    # -- internals ------------------------------------------------------------------------
    async def _refresh(self, topic: str) -> Route:
        meta = await read_meta_async(self._conn, topic)
        route = self._routes[topic] = Route(meta, self._conn.keys)
        return route

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``ready()``, re-checked whenever records resolve. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def _wait_for_room(self) -> None:
        timeout = self.config.block_timeout
        self._wake.set()
        if not await self._until(lambda: not self._acc.full() or self._acc.closed, timeout):
            raise self._acc.full_error()
        if self._acc.closed:
            raise ClosedError("producer closed while send() waited for buffer space")

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="partstream-async-producer"
        )

    async def _stop(self) -> None:
        """close() timed out: stop the sender; batches still on the wire fail as abandoned."""
        tasks = [t for t in (self._task, *self._rounds) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for batches in self._rounds.values():
            complete(self._acc.abandon([b for b in batches if not b.done]))
        self._rounds.clear()
        await self._release_held()

    async def _run(self) -> None:
        acc = self._acc
        while True:
            if len(self._rounds) >= SENDERS:
                await asyncio.wait(self._rounds, return_when=asyncio.FIRST_COMPLETED)
            self._wake.clear()
            batches, expired, wake = acc.drain()
            if expired:
                complete(acc.expire(expired))
                acc.finish([], [], expired)
                self._notify()
            if batches:
                task = asyncio.get_running_loop().create_task(self._round(batches))
                self._rounds[task] = batches
                task.add_done_callback(self._round_done)
                continue
            if expired:
                continue
            if acc.closed and not acc.ready and not acc.open:
                if self._rounds:
                    await asyncio.wait(self._rounds)
                    continue
                await self._release_held()
                return
            if not self._rounds:
                await self._release_held()  # idle: the kept connections go back first
            timeout = None if wake is None else max(0.0, wake - acc.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.pop(task, None)
        self._wake.set()

    async def _round(self, batches: list[Batch]) -> None:
        timeout = self._conn.config.socket_timeout
        guard = contextlib.nullcontext()  # one loop, no lock: nothing runs between awaits
        driver = Driver(send_round(self._acc, guard, batches, self._target, timeout, self._moving))
        step = driver.next()
        while step is not None:
            try:
                driver.reply(await self._io(step))
            except Exception as err:
                driver.reply(error=err)
            step = driver.next()
        complete(driver.result)
        self._notify()

    def _moving(self, err: Exception) -> bool:
        return retriable(self._conn, err)

    def _target(self, key: bytes) -> AsyncLink:
        if self._single is not None:
            return self._single
        return self._link(self._conn.client.get_node_from_key(key))

    def _link(self, node: Any) -> AsyncLink:
        link = self._links.get(node.name)
        if link is None:
            link = self._links[node.name] = AsyncLink(node=node)
        return link

    async def _io(self, step: Step) -> Any:
        if isinstance(step, Exchange):
            if step.target is self._single:
                return await self._exchange_held(step)
            return await aexchange(step.target, step.payload, step.expect)
        if step.what == "reload":
            await self._reload()
            return None
        return await self._redirect(step.err)

    async def _exchange_held(self, step: Exchange) -> list[Any]:
        """:func:`aexchange` on a connection kept between back-to-back rounds, as the
        threaded sender does (``Sender._exchange_held``): the pool's get and release cost
        ~20 us of CPU a round on asyncio (bench/README.md, issue 18, session 12). Taken from
        the pool at the first round (a refused connection still reads "not sent"); one that
        broke, or an exchange that raised or was cancelled, goes back to the pool."""
        link = step.target
        conn = self._held.pop() if self._held else None
        if conn is not None and not is_connected(conn):
            await link.release(conn)
            conn = None
        if conn is None:
            try:
                conn = await link.acquire()
            except CONNECTION_ERRORS as err:
                return Replies.not_sent(err, step.expect)
        try:
            out = await aexchange_on(conn, step.payload, step.expect)
        except BaseException:
            await link.release(conn)  # (aexchange_on disconnected it: replies may be unread)
            raise
        self._held.append(conn)
        return out

    async def _release_held(self) -> None:
        while self._held and self._single is not None:
            await self._single.release(self._held.pop())

    async def _redirect(self, err: Exception) -> AsyncLink | None:
        node = await aredirect(self._conn.client, err)
        return None if node is None else self._link(node)

    async def _reload(self) -> None:
        conn = self._conn
        try:
            if conn.is_cluster:  # a node restarted, failed over or joined: every primary
                await conn.client.nodes_manager.initialize()
                for node in conn.client.get_primaries():
                    await conn.functions.load(node)
            else:
                await conn.functions.load()
        except Exception:  # not ours to load, or an outage: the next attempt backs off
            log.debug("loading the server-side functions failed", exc_info=True)
