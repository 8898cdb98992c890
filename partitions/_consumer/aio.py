"""The asyncio consumer: the same steps as :class:`~partitions._consumer.consumer.Consumer`,
answered with awaits on ``redis.asyncio`` instead of blocking calls.

``async with AsyncConsumer(conn, group, topics) as c: async for record in c: ...``, or
``await c.poll(max_records, timeout)``, ``await c.commit()``, ``await c.seek(...)``. Same
:class:`~partitions._client.config.ConsumerConfig`, the same guarantees (fencing, takeover
order, dead letters, delivery counting, ``max_poll_interval_ms``) and errors: every decision
is :class:`~partitions._consumer.flow.ConsumerFlow`'s, shared with the threaded consumer.

Cancellation (``task.cancel()``, ``asyncio.timeout``) of any call is safe: a request cut off
mid-way drops its connection (its reply is never read by anyone else), what was fetched and
not handed out stays pending for the group and is read again after the last record handed
out, and acks of a cut-off commit are sent again with the next read (XACK is idempotent):
nothing is lost, nothing is acked twice for a different hand-out. Closing commits and leaves.

Rebalance listener callbacks may be coroutines (awaited) or plain functions; they run inside
``poll()``/iteration on the consumer's task: revocations (the user may still commit) before
assignments. Heartbeats run off the event loop (the member runner's thread, see the module
notes in docs), so they never depend on the application's loop returning quickly. A cluster
URL is not supported by this shell yet (ConfigError).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import redis.asyncio as aredis
import redis.asyncio.connection as aconn
import redis.connection as sconn
import redis.exceptions as rex

from coordinator.member import Member
from partitions._admin.offsets import target_id
from partitions._admin.topics import TopicAdmin
from partitions._base.errors import (
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    PartstreamError,
    translate,
)
from partitions._base.fence import release_fence
from partitions._base.keys import validate_name
from partitions._base.records import Record
from partitions._base.serde import Serializer, decoder
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer import ops
from partitions._consumer.flow import ConsumerFlow
from partitions._consumer.rebalance import compose

_ASYNC_CLASSES: dict[type[Any], type[Any]] = {
    sconn.UnixDomainSocketConnection: aconn.UnixDomainSocketConnection,
    sconn.SSLConnection: aconn.SSLConnection,
    sconn.Connection: aconn.Connection,
}


def async_pool(conn: Connection) -> aredis.ConnectionPool:
    """A ``redis.asyncio`` pool to the server ``conn`` talks to, with its settings."""
    sync_pool = conn.client.connection_pool
    cls = next(
        (a for s, a in _ASYNC_CLASSES.items() if issubclass(sync_pool.connection_class, s)),
        aconn.Connection,
    )
    accepted = set(inspect.signature(cls.__init__).parameters)
    if issubclass(cls, aconn.SSLConnection):
        accepted |= set(inspect.signature(aconn.Connection.__init__).parameters)
    kwargs = {k: v for k, v in sync_pool.connection_kwargs.items() if k in accepted}
    return aredis.ConnectionPool(connection_class=cls, **kwargs)


class AsyncConsumer:
    """Reads records of ``topics`` as a member of ``group`` from asyncio code.

    ``conn`` is a :class:`~partitions._client.connection.Connection` (its server, keys and
    Functions library); the data path opens ``redis.asyncio`` connections to the same server.
    Use as ``async with``, or await :meth:`close`. Use from one task at a time.
    ``value_serializer`` / ``key_serializer`` as for :class:`~partitions.Consumer`.
    """

    def __init__(
        self,
        conn: Connection,
        group: str,
        topics: str | Iterable[str],
        *,
        config: ConsumerConfig | None = None,
        instance_id: str | None = None,
        listener: Any = None,
        group_settings: GroupSettings | None = None,
        value_serializer: Serializer | None = None,
        key_serializer: Serializer | None = None,
    ) -> None:
        self._decoder = decoder(value_serializer, key_serializer)
        if conn.is_cluster:
            raise ConfigError("AsyncConsumer does not support a cluster yet: use Consumer")
        self.config = config or ConsumerConfig()
        self.group = validate_name(group, "group")
        names = [topics] if isinstance(topics, str) else sorted(set(topics))
        if not names:
            raise ConfigError("a consumer needs at least one topic")
        self.config.check_against(conn.config)
        self.topics = tuple(names)
        self._conn = conn
        self._instance_id = instance_id
        self._listener = listener
        self._group_settings = group_settings
        self._admin = TopicAdmin(conn)
        self._pool = async_pool(conn)
        self._data: Any = None  # the data connection (pipelines, WATCH/MULTI)
        self._blocker: Any = None  # blocking waits, cut short by CLIENT UNBLOCK
        self._blocker_id: int | None = None
        self._closing = self._closed = False
        self._started = False
        self._flow: ConsumerFlow | None = None
        self.member_id = ""

    async def start(self) -> AsyncConsumer:
        """Join the group (DuplicateInstanceError and friends raise here) and start."""
        if self._started:
            return self
        metas = await asyncio.to_thread(lambda: {n: self._admin.get(n) for n in self.topics})
        member = Member(
            self._conn.client, self._conn.keys, self.group,
            {name: m.partitions for name, m in metas.items()}, instance_id=self._instance_id,
            client_info=f"partstream async consumer pid {os.getpid()}",
            settings=self._group_settings,
        )  # fmt: skip
        self.member_id = member.member_id
        self._loop = asyncio.get_running_loop()
        self.assignment_state, self._runner, self._flow = compose(
            self._conn, member, self.config, ops.Events(wake=self._wake), metas,
            listener=self._listener, apply_here=lambda revoked: False,
            closing=lambda: self._closing, decoder=self._decoder,
        )  # fmt: skip
        await asyncio.to_thread(self._runner.start)
        self._started = True
        return self

    # -- reading ----------------------------------------------------------------------------
    async def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records of owned partitions, waiting up to ``timeout`` s
        (see :meth:`Consumer.poll <partitions._consumer.consumer.Consumer.poll>`)."""
        flow = self._enter()
        with self._runner.polling():
            batch: list[Record] = await self._drive(flow.poll(max_records, timeout))
        return batch

    def __aiter__(self) -> AsyncIterator[Record]:
        """Records one by one until close; with auto-commit a record is acked once the loop
        asks for the next one (leaving the loop leaves the last one unacked)."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        while not self._closed:
            flow = self._enter()
            with self._runner.polling():
                rec = await self._drive(flow.next_one())
            if rec is None:
                continue
            yield rec
            flow.done_one(rec)

    # -- committing and positions -----------------------------------------------------------
    async def commit(self, records: Iterable[Record] | None = None) -> None:
        """Ack ``records`` (default: every record handed out and not yet acked) now."""
        flow = self._enter()
        with self._runner.polling():
            await self._drive(flow.commit(records))

    async def nack(self, record: Record) -> None:
        """Deliver ``record`` again next (or dead-letter it once out of deliveries)."""
        await self._drive(self._enter().nack(record))

    async def dead_letter(
        self, record: Record, reason: str = "rejected", *, error: str | None = None
    ) -> None:
        """Move ``record`` to its partition's dead-letter stream now, with ``reason`` (a
        short label) and optionally ``error`` (free text, kept up to 1 KiB)."""
        await self._drive(self._enter().dead_letter(record, reason, error))

    async def seek(self, topic: str, partition: int, to: str | int) -> None:
        """Read an owned partition from ``to`` ('earliest', 'latest', an id, a time in ms)."""
        tp = TopicPartition(topic, partition)
        await self._drive(self._enter().seek(tp, target_id(to)))

    async def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns and reads now."""
        await self._drive(self._enter().sync())
        return set(self.assignment_state.parts)

    def fence(self, topic: str, partition: int) -> str | None:
        """The grant (``"<member_id> <token>"``) this consumer reads a partition under."""
        return self.assignment_state.fence(topic, partition)

    @property
    def refused_acks(self) -> int:
        return self._enter().tally.refused_acks

    @property
    def dead_lettered(self) -> int:
        return self._enter().tally.dead_lettered

    # -- lifecycle --------------------------------------------------------------------------
    async def close(self) -> None:
        """Commit what was processed, release the partitions, leave the group, stop."""
        if self._closed or self._flow is None:
            self._closed = True
            return
        try:
            await self._drive(self._flow.close())
        finally:
            self._closing = True
            self._wake()
            # Revoke here, on this task (commit, release the fences), before the runner
            # leaves: its own revocation then finds nothing left.
            with contextlib.suppress(PartstreamError):
                await self._drive(self._flow.revoke(set(self.assignment_state.parts)))
            self._flow.events.release_all()
            await asyncio.to_thread(self._runner.close)
            self._flow.events.release_all()
            self._closed = True
            await self._drop(self._data)
            await self._drop(self._blocker)
            self._data = self._blocker = None
            await self._pool.disconnect()

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
    def _enter(self) -> ConsumerFlow:
        if self._flow is None:
            raise ClosedError("the consumer is not started: use `async with` or await start()")
        if self._closed:
            raise ClosedError("the consumer is closed")
        if self._runner.fatal is not None:
            raise self._runner.fatal
        return self._flow

    def _wake(self) -> None:
        """Interrupt a blocking wait (called from the heartbeat thread)."""
        blocker_id = self._blocker_id
        if blocker_id is None:
            return
        with contextlib.suppress(rex.RedisError):
            self._conn.client.client_unblock(blocker_id)

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
            return await self._exchange(op.commands, op.what)
        if isinstance(op, ops.Wait):
            await self._wait(op)
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
            await asyncio.to_thread(self._conn.functions.load)
        elif isinstance(op, ops.Release):
            st, conn = op.st, self._conn
            await asyncio.to_thread(
                release_fence, conn.client, conn.keys, st.group, st.topic, st.partition,
                st.member_id, st.token, durability=op.durability,
            )  # fmt: skip
        elif isinstance(op, ops.ReadTopics):
            return await asyncio.to_thread(lambda: {n: self._admin.get(n) for n in op.names})
        else:  # OnNodes, Claim: not asked of a single-node data path
            raise ConfigError(f"AsyncConsumer cannot answer {type(op).__name__}")
        return None

    async def _exchange(self, commands: list[tuple[Any, ...]], what: str) -> list[Any]:
        """One write, a reply (or the server's error) per command, on the data connection;
        cut off (cancelled, failed) mid-way, the connection is dropped: its replies are lost
        with it, never read as another request's."""
        if self._data is None:
            self._data = await self._connect(what)
        c = self._data
        replies: list[Any] = []
        try:
            await c.send_packed_command(c.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await c.read_response())
                except rex.ResponseError as err:
                    replies.append(err)
        except BaseException as err:
            self._data = None
            await self._drop(c)
            if isinstance(err, rex.RedisError):
                raise translate(err, what) from err
            if isinstance(err, OSError):
                raise ConnectionFailedError(f"{what}: connection lost ({err})") from err
            raise
        return replies

    async def _wait(self, op: ops.Wait) -> None:
        if self._blocker is None:
            blocker = await self._connect("connecting for blocking reads")
            await blocker.send_command("CLIENT", "ID")
            self._blocker_id = int(await blocker.read_response())
            self._blocker = blocker
        if self._flow is not None and self._flow.events.pending():
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
            raise

    async def _reset_blocker(self) -> None:
        old, self._blocker, self._blocker_id = self._blocker, None, None
        await self._drop(old)

    async def _connect(self, what: str) -> Any:
        try:
            return await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except rex.RedisError as err:
            raise translate(err, what) from err
        except OSError as err:
            raise ConnectionFailedError(f"{what}: {err}") from err

    async def _drop(self, c: Any) -> None:
        if c is None:
            return
        with contextlib.suppress(Exception):
            await c.disconnect()
        with contextlib.suppress(Exception):
            await self._pool.release(c)
