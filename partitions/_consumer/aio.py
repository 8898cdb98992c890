"""The asyncio consumer: the same steps as :class:`~partitions._consumer.consumer.Consumer`,
answered with awaits on ``redis.asyncio`` instead of blocking calls.

``async with AsyncConsumer(conn, group, topics) as c: async for record in c: ...``, or
``await c.poll(max_records, timeout)``, ``await c.commit()``, ``await c.seek(...)``; ``conn``
is an :class:`~partitions._client.aio.AsyncConnection` (``await connect_async()``): a single
server, Sentinels or a cluster. Same :class:`~partitions._client.config.ConsumerConfig`, the
same guarantees (fencing, takeover order, dead letters, delivery counting,
``max_poll_interval_ms``) and errors: every decision is
:class:`~partitions._consumer.flow.ConsumerFlow`'s, shared with the threaded consumer.

What runs where: heartbeats run in a task of their own
(:class:`~coordinator.aio.AsyncMemberRunner`), which also claims the fences of granted
partitions; so they go on while the application awaits anything (a slow handler awaiting
I/O, an ``asyncio.sleep``), and stop only if the event loop itself is blocked (then
``max_poll_interval_ms`` and the session apply, as to a stuck thread). Everything else (reads,
hand-outs, commits, the user's rebalance callbacks) runs in the task that awaits the
consumer's methods.

Cancellation (``task.cancel()``, ``asyncio.timeout``) of any call is safe: a request cut off
mid-way drops its connection (its reply is never read by anyone else), what was fetched and
not handed out stays pending for the group and is read again after the last record handed
out, and acks of a cut-off commit are sent again with the next read (XACK is idempotent):
nothing is lost, nothing is acked twice for a different hand-out. :meth:`AsyncConsumer.close`
commits and leaves even when the task awaiting it is cancelled meanwhile (the cancellation
is raised once it is done).

Rebalance listener callbacks (:class:`~coordinator.listener.AsyncRebalanceListener`, or a
plain :class:`~coordinator.listener.RebalanceListener`) are awaited inside ``poll()`` /
iteration / ``commit()``, in the consumer's task: revocations (the user may still ``await
consumer.commit()``) before assignments.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import redis.exceptions as rex

from coordinator.aio import AsyncMember, AsyncMemberRunner
from partitions._admin.offsets import target_id
from partitions._admin.topics import read_meta_async
from partitions._base.errors import ClosedError, ConfigError, ConnectionFailedError, translate
from partitions._base.keys import Layouts
from partitions._base.records import Record
from partitions._base.serde import Serializer, decoder
from partitions._base.settings import GroupSettings
from partitions._base.steps import adrive
from partitions._base.types import TopicPartition
from partitions._client import pernode, wire
from partitions._client.aio import AsyncConnection
from partitions._client.config import ConsumerConfig
from partitions._consumer import ops
from partitions._consumer.flow import ConsumerFlow
from partitions._consumer.rebalance import AsyncBridge, compose
from partitions._consumer.shell import ConsumerShell
from partitions._telemetry.metrics import ClientMetrics, consumer_metrics
from partitions._telemetry.tracing import ConsumerTracer, TracerProvider, consumer_tracer

T = TypeVar("T")


class AsyncConsumer(ConsumerShell):
    """Reads records of ``topics`` as a member of ``group`` from asyncio code.

    ``conn`` is an :class:`~partitions._client.aio.AsyncConnection`; it stays open after
    :meth:`close`. ``group_settings`` apply only when this member creates the group. Use as
    ``async with``, or await :meth:`start` and :meth:`close`. Use from one task at a time.
    ``value_serializer`` / ``key_serializer``, ``metrics`` and ``tracing`` as for
    :class:`~partitions.Consumer` (the same instruments and spans; the ``process`` span of a
    record is current in the task while its ``async for`` body runs).
    """

    def __init__(
        self,
        conn: AsyncConnection,
        group: str,
        topics: str | Iterable[str],
        *,
        config: ConsumerConfig | None = None,
        instance_id: str | None = None,
        listener: Any = None,
        group_settings: GroupSettings | None = None,
        value_serializer: Serializer | None = None,
        key_serializer: Serializer | None = None,
        metrics: ClientMetrics | None = None,
        tracing: bool | TracerProvider = False,
    ) -> None:
        if not isinstance(conn, AsyncConnection):
            raise ConfigError(
                "AsyncConsumer takes an AsyncConnection (`await partitions.connect_async()`); "
                f"got {type(conn).__name__} (the threaded Consumer takes a Connection)"
            )
        self._arguments(group, topics, config)
        self._decoder = decoder(value_serializer, key_serializer)
        self._metrics = consumer_metrics(metrics, self.group)
        self._tracing = tracing
        self._tracer: ConsumerTracer | None = None
        self.config.check_against(conn.config)
        self._conn = conn
        self._instance_id = instance_id
        self._listener = listener
        self._group_settings = group_settings
        self._pool = None if conn.is_cluster else conn.client.connection_pool
        self._data: Any = None  # the data connection (pipelines, WATCH/MULTI)
        # True once an exchange completed on ``_data`` (what it left there, a WATCH, holds
        # while the connection stays connected); False for a connection just taken.
        self._data_used = False
        # ``_data``'s client id, once an exchange blocked on it (_wake() unblocks it then).
        self._data_id: int | None = None
        self._blocker: Any = None  # blocking waits, cut short by CLIENT UNBLOCK
        self._blocker_id: int | None = None
        self._unblocks: set[asyncio.Task[None]] = set()
        self._node_of = pernode.async_node_of(conn) if conn.is_cluster else None
        self._perform_nodes = pernode.perform_async(conn, asyncio.sleep)
        self._closing = False
        self._started = False
        self.member_id = ""

    async def start(self) -> AsyncConsumer:
        """Join the group (DuplicateInstanceError and friends raise here) and start."""
        if self._started:
            return self
        if self._closed:
            raise ClosedError("the consumer is closed")
        metas = await self._read_topics(self.topics)
        member = AsyncMember(
            self._conn.client, self._conn.keys, self.group,
            {name: m.partitions for name, m in metas.items()}, instance_id=self._instance_id,
            client_info=f"partstream async consumer pid {os.getpid()}",
            settings=self._group_settings, layouts=Layouts(m.layout for m in metas.values()),
        )  # fmt: skip
        self.member_id = member.member_id
        self._member = member
        self._tracer = consumer_tracer(self._tracing, self.group, self.member_id)
        events = ops.Events(wake=self._wake)
        self.assignment_state, self._runner, self._flow = compose(
            self._conn, member, self.config, events, metas, listener=self._listener,
            shell=(AsyncBridge, AsyncMemberRunner), apply_here=self._revoke_here,
            closing=lambda: self._closing, metrics=self._metrics, decoder=self._decoder,
        )  # fmt: skip
        if self._metrics is not None:
            parts = self.assignment_state.parts
            self._metrics.track_owned(lambda: len(parts))
        try:
            await self._runner.start()
        except BaseException:
            # Cut off or refused while joining: leave if the join went through.
            with contextlib.suppress(Exception):
                await self._runner.close()
            raise
        self._started = True
        return self

    # -- reading ----------------------------------------------------------------------------
    async def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records of owned partitions, waiting up to ``timeout`` s
        (see :meth:`Consumer.poll <partitions._consumer.consumer.Consumer.poll>`)."""
        flow = self._check_open()
        start = time.time_ns() if self._tracer is not None else 0
        with self._runner.polling():
            batch: list[Record] = await self._drive(flow.poll(max_records, timeout))
        if batch and self._tracer is not None:
            self._tracer.received(batch, start)
        return batch

    def __aiter__(self) -> AsyncIterator[Record]:
        """Records one by one until close; with auto-commit a record is acked once the loop
        asks for the next one (leaving the loop leaves the last one unacked)."""
        records = self._iterate()
        return records if self._tracer is None else self._tracer.aprocess(records)

    async def _iterate(self) -> AsyncIterator[Record]:
        while not self._closed:
            flow = self._check_open()
            with self._runner.polling():
                rec = await self._drive(flow.next_one())
            if rec is None:
                continue
            yield rec
            flow.done_one(rec)

    # -- committing and positions -----------------------------------------------------------
    async def commit(self, records: Iterable[Record] | None = None) -> None:
        """Ack ``records`` (default: every record handed out and not yet acked) now (see
        :meth:`Consumer.commit <partitions._consumer.consumer.Consumer.commit>`)."""
        flow = self._check_open()
        with self._runner.polling():
            await self._drive(flow.commit(records))

    async def nack(self, record: Record) -> None:
        """Deliver ``record`` again next (or dead-letter it once out of deliveries)."""
        await self._drive(self._check_open().nack(record))

    async def dead_letter(
        self, record: Record, reason: str = "rejected", *, error: str | None = None
    ) -> None:
        """Move ``record`` to its partition's dead-letter stream now, with ``reason`` (a
        short label) and optionally ``error`` (free text, kept up to 1 KiB)."""
        await self._drive(self._check_open().dead_letter(record, reason, error))

    async def seek(self, topic: str, partition: int, to: str | int) -> None:
        """Read an owned partition from ``to`` ('earliest', 'latest', an id, a time in ms)."""
        tp = TopicPartition(topic, partition)
        await self._drive(self._check_open().seek(tp, target_id(to)))

    async def position(self) -> dict[TopicPartition, str | None]:
        """Per owned partition, the id of the last record handed out (None: none yet)."""
        await self._drive(self._check_open().sync())
        return {tp: st.last_id for tp, st in sorted(self.assignment_state.parts.items())}

    async def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns and reads now."""
        await self._drive(self._check_open().sync())
        return set(self.assignment_state.parts)

    # -- lifecycle --------------------------------------------------------------------------
    async def close(self) -> None:
        """Commit what was processed, release the partitions, leave the group, stop.

        Runs to its end even if the awaiting task is cancelled meanwhile (the cancellation
        is raised afterwards)."""
        if self._closed:
            return
        if not self._started:
            self._closed = True
            return
        await _finish(self._close())

    async def _close(self) -> None:
        flow = self._flow
        try:
            await self._drive(flow.close())
        finally:
            self._closing = True
            self._wake()
            flow.events.release_all()
            await self._runner.close()  # revokes what is left, here, then leaves
            self._closed = True
            flow.events.release_all()
            for task in list(self._unblocks):
                task.cancel()
            await self._drop(self._data)
            await self._drop(self._blocker)
            self._data = self._blocker = None

    async def __aenter__(self) -> AsyncConsumer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals --------------------------------------------------------------------------
    def _state(self) -> ConsumerFlow:
        if not self._started:
            raise ClosedError("the consumer is not started: use `async with` or await start()")
        return self._flow

    async def _revoke_here(self, revoked: set[TopicPartition]) -> bool:
        """Closing: the runner's revocation comes from our own close; apply it now."""
        if not self._closing:
            return False
        await self._drive(self._flow.revoke(revoked))
        return True

    def _wake(self) -> None:
        """Interrupt a blocking wait (the heartbeat task posted an event): on the blocking
        connection, and on the data connection, where a wait rides in front of a fetch."""
        for client_id in (self._blocker_id, self._data_id):
            if client_id is None:
                continue
            task = asyncio.get_running_loop().create_task(self._unblock(client_id))
            self._unblocks.add(task)
            task.add_done_callback(self._unblocks.discard)

    async def _unblock(self, blocker_id: int) -> None:
        with contextlib.suppress(rex.RedisError, OSError):
            await self._conn.client.client_unblock(blocker_id)

    async def _drive(self, step: ops.Step) -> Any:
        """Run a step to its end, awaiting each answer (a cancellation is thrown in too)."""
        reply: Any = None
        error: BaseException | None = None
        while (turn := ops.advance(step, reply, error)).op is not None:
            try:
                reply, error = await self._answer(turn.op), None
            except (Exception, asyncio.CancelledError) as err:
                reply, error = None, err
        return turn.value

    async def _answer(self, op: ops.Op) -> Any:
        if isinstance(op, ops.Exchange):
            if op.same_connection and not self._same_connection():
                return None
            if op.block_ms and self._data_id is None:  # for _wake(): CLIENT UNBLOCK <id>
                self._data_id = int((await self._exchange([("CLIENT", "ID")], op.what, False))[0])
            return await self._exchange(op.commands, op.what, op.bulk)
        if isinstance(op, ops.Wait):
            await self._wait(op)
        elif isinstance(op, ops.OnNodes):
            assert self._node_of is not None
            steps = pernode.on_nodes_steps(
                op.commands, self._node_of, op.what, op.waits, op.durability
            )
            return await adrive(steps, self._perform_nodes)
        elif isinstance(op, ops.Sleep):
            await asyncio.sleep(op.seconds)
        elif isinstance(op, ops.Callback):
            result = op.fn(op.arg)
            if inspect.isawaitable(result):
                await result
        elif isinstance(op, ops.Reset):
            await self._drop(self._data)
            self._data = None
        elif isinstance(op, ops.LoadFunctions):
            await self._conn.functions.load()
        elif isinstance(op, ops.ReadTopics):
            return await self._read_topics(op.names)
        else:  # Claim: the bridge's, not the flow's
            raise ConfigError(f"AsyncConsumer cannot answer {type(op).__name__}")
        return None

    async def _read_topics(self, names: Iterable[str]) -> dict[str, Any]:
        return {name: await read_meta_async(self._conn, name) for name in names}

    async def _exchange(self, commands: list[tuple[Any, ...]], what: str, bulk: bool) -> Any:
        """One write, a reply (or the server's error) per command, on the data connection;
        cut off (cancelled, failed) mid-way, the connection is dropped: its replies are lost
        with it, never read as another request's."""
        if self._data is None:
            self._data = await self._connect(what)
            self._data_used, self._data_id = False, None
        c = self._data
        payload = wire.packed(commands)
        try:
            with ops.gc_paused(bulk):
                replies = await wire.aexchange_on(c, payload, len(commands))
        except BaseException as err:
            self._data = None
            await self._drop(c)
            if isinstance(err, rex.RedisError):
                raise translate(err, what) from err
            raise
        broken = wire.broken_reply(replies)
        if broken is not None:
            self._data = None
            await self._drop(c)
            if isinstance(broken, rex.RedisError):
                raise translate(broken, what) from broken
            raise ConnectionFailedError(f"{what}: connection lost ({broken})") from broken
        self._data_used = True
        return replies

    def _same_connection(self) -> bool:
        """The data connection the last exchange completed on, connected since."""
        c = self._data
        return c is not None and self._data_used and wire.is_connected(c)

    async def _wait(self, op: ops.Wait) -> None:
        flow = self._flow
        if self._node_of is not None:  # a cluster: no blocking read across slots
            steps = ops.poll_wait_steps(op.waiting, op.block_ms, self._node_of, flow.events.pending)
            await adrive(steps, self._perform_nodes)
            return
        if self._blocker is None:
            blocker = await self._connect("connecting for blocking reads")
            try:
                await blocker.send_command("CLIENT", "ID")
                self._blocker_id = int(await blocker.read_response())
            except BaseException:
                await self._drop(blocker)
                raise
            self._blocker = blocker
        if flow.events.pending():
            return  # posted while the connection opened: its wake-up was missed
        b = self._blocker
        args: list[Any] = ["XREAD", "COUNT", 1, "BLOCK", op.block_ms, "STREAMS"]
        args += [*op.waiting, *op.waiting.values()]
        try:
            await b.send_command(*args)
            await b.read_response()
        except rex.ResponseError as err:
            if not str(err).startswith("UNBLOCKED"):
                raise translate(err, "waiting for new entries") from err
            await self._reset_blocker()  # demoted by a failover: reconnect, read again
        except BaseException as err:
            await self._reset_blocker()
            if isinstance(err, rex.RedisError):
                raise translate(err, "waiting for new entries") from err
            if isinstance(err, OSError):
                raise ConnectionFailedError(f"waiting for new entries: {err}") from err
            raise

    async def _reset_blocker(self) -> None:
        old, self._blocker, self._blocker_id = self._blocker, None, None
        await self._drop(old)

    async def _connect(self, what: str) -> Any:
        assert self._pool is not None
        try:
            return await self._pool.get_connection()
        except rex.RedisError as err:
            raise translate(err, what) from err
        except OSError as err:
            raise ConnectionFailedError(f"{what}: {err}") from err

    async def _drop(self, c: Any) -> None:
        if c is None or self._pool is None:
            return
        with contextlib.suppress(Exception):
            await c.disconnect()
        with contextlib.suppress(Exception):
            await self._pool.release(c)


async def _finish(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the awaiting task is cancelled meanwhile; the
    cancellation is raised once it is done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait([task])
        raise
