"""The threaded consumer's I/O: answers the requests of its steps with blocking calls.

The decisions (which calls, what their replies mean) are the flow's and the plans'
(:mod:`partitions._consumer.flow`, :mod:`partitions._consumer.plans`); this module only
talks to the server. All owned partitions are read in one pipelined round trip on the
fetcher's own connection (one per node in a cluster), the previous batch's acks riding along.

When a fetch comes back empty, the consumer blocks on ``XREAD BLOCK`` over the owned
streams from the ids the fetch saw last (explicit ids: no lost wake-up), for at most
``block_ms``, well below the socket timeout, on a connection of its own that the heartbeat
thread cuts short with CLIENT UNBLOCK. On a cluster, where a multi-key read must stay in one
slot, :meth:`Fetcher.poll_wait` polls each node instead (the steps of both cluster paths are
:mod:`partitions._client.pernode`'s and :func:`partitions._consumer.ops.poll_wait_steps`).

On a cluster, a call whose partition's slot is being migrated (``TRYAGAIN``, or redirections
beyond a few quick attempts) did not run: it keeps its redirect error in place, and the plans
keep its acks for a later call; no record is lost or reordered.

Not thread-safe (but :meth:`Fetcher.wake`): used by one consumer on its own thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions as rex

from partitions._admin.topics import TopicAdmin, TopicMeta
from partitions._base.durability import Durability
from partitions._base.errors import ConnectionFailedError, translate
from partitions._base.steps import drive
from partitions._client import pernode, wire
from partitions._client.connection import Connection
from partitions._consumer import ops


class Fetcher:
    """Blocking answers to :data:`~partitions._consumer.ops.Op` requests. One thread only."""

    def __init__(self, conn: Connection, interrupted: Callable[[], bool]) -> None:
        self.conn = conn
        self.client = conn.client
        self.admin = TopicAdmin(conn)
        self.interrupted = interrupted  # a rebalance event is waiting: stop waiting
        self._conn: Any = None  # the data connection: pipelines and WATCH/MULTI
        # True once an exchange completed on ``_conn`` (what it left there, a WATCH, holds
        # while the connection stays connected); False for a connection just taken.
        self._conn_used = False
        # ``_conn``'s client id, once an exchange blocked on it (wake() unblocks it then).
        self._conn_id: int | None = None
        # Blocking waits (XREAD BLOCK) on a connection of their own; a cluster polls instead
        # (a blocking read over several slots does not exist). Opened on first use.
        self._blocker: Any = None
        self._blocker_id: int | None = None
        self._node_of = pernode.sync_node_of(conn)
        self._perform = pernode.perform_sync(conn, time.sleep)

    def drive(self, step: ops.Step) -> Any:
        """Run a step to its end, answering each request; its errors raise here."""
        return ops.drive(step, self._answer)

    def _answer(self, op: ops.Op) -> Any:
        try:
            return self.answer(op)
        except ConnectionFailedError:
            self.reset_blocker()  # after a failover it would wait on the old primary
            raise

    def answer(self, op: ops.Op) -> Any:
        if isinstance(op, ops.Exchange):
            if op.same_connection and not self.same_connection():
                return None
            if op.block_ms and self._conn_id is None:  # for wake(): CLIENT UNBLOCK <id>
                self._conn_id = int(self.exchange([("CLIENT", "ID")], op.what)[0])
            return self.exchange(op.commands, op.what, bulk=op.bulk)
        if isinstance(op, ops.Wait):
            return self.wait(op.waiting, op.block_ms)
        if isinstance(op, ops.Sleep):
            time.sleep(op.seconds)
        elif isinstance(op, ops.Callback):
            op.fn(op.arg)
        elif isinstance(op, ops.OnNodes):
            return self.on_nodes(op.commands, op.what, op.waits, op.durability)
        elif isinstance(op, ops.Reset):
            self._drop_conn()
        elif isinstance(op, ops.LoadFunctions):
            self.conn.functions.load()
        elif isinstance(op, ops.ReadTopics):
            return self.read_topics(op.names)
        return None

    def read_topics(self, names: tuple[str, ...]) -> dict[str, TopicMeta]:
        return {name: self.admin.get(name) for name in names}

    # -- the data connection ------------------------------------------------------------------
    def exchange(self, commands: list[tuple[Any, ...]], what: str, *, bulk: bool = False) -> Any:
        """Send ``commands`` in one write on the fetcher's own connection and read a reply
        (or the server's error) per command. Sent once: a call whose reply was lost is never
        re-sent behind our back (a read that ran would be skipped by the next '>' read); the
        caller recovers from ConnectionFailedError instead."""
        c = self._txn_conn()
        payload = wire.packed(commands)
        try:
            with ops.gc_paused(bulk):
                replies = wire.exchange_on(c, payload, len(commands))
        except rex.RedisError as err:
            self._drop_conn()
            raise translate(err, what) from err
        broken = wire.broken_reply(replies)
        if broken is not None:
            self._drop_conn()
            if isinstance(broken, rex.RedisError):
                raise translate(broken, what) from broken
            raise ConnectionFailedError(f"{what}: connection lost ({broken})") from broken
        self._conn_used = True
        return replies

    def same_connection(self) -> bool:
        """The data connection the last exchange completed on, connected since."""
        c = self._conn
        return c is not None and self._conn_used and wire.is_connected(c)

    def _txn_conn(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self.client.connection_pool.get_connection()
            except rex.RedisError as err:
                raise translate(err, "connecting") from err
            self._conn_used, self._conn_id = False, None
        return self._conn

    def _drop_conn(self) -> None:
        """Disconnect and give back the fetcher's connection after an error: the next one
        comes from the pool, which connects it where the primary is now (a connection
        reconnecting by itself would go back to its old address, after a failover too)."""
        c, self._conn, self._conn_used, self._conn_id = self._conn, None, False, None
        if c is not None:
            c.disconnect()
            self.client.connection_pool.release(c)

    # -- a cluster ----------------------------------------------------------------------------
    def on_nodes(
        self,
        commands: list[tuple[str, tuple[Any, ...]]],
        what: str,
        waits: list[tuple[Any, ...]],
        durability: Durability,
    ) -> list[Any]:
        steps = pernode.on_nodes_steps(commands, self._node_of, what, waits, durability)
        replies: list[Any] = drive(steps, self._perform)
        return replies

    # -- waiting --------------------------------------------------------------------------------
    def wait(self, waiting: dict[str, str], block_ms: int) -> None:
        if self.conn.is_cluster:  # a cluster: no blocking read across slots
            self.poll_wait(waiting, block_ms)
            return
        blocker = self._open_blocker()
        if self.interrupted():  # posted while the connection opened: its wake-up was missed
            return
        try:
            blocker.xread(waiting, count=1, block=block_ms)
        except rex.ResponseError as err:
            if not str(err).startswith("UNBLOCKED"):
                raise translate(err, "waiting for new entries") from err
            # The server changed role under the blocked read (a primary demoted to replica
            # by a failover): reconnect, which finds the new primary, and read again.
            self.reset_blocker()
        except rex.RedisError as err:
            self.reset_blocker()
            raise translate(err, "waiting for new entries") from err

    def poll_wait(self, waiting: dict[str, str], block_ms: int) -> None:
        """Cluster: see :func:`partitions._consumer.ops.poll_wait_steps`."""
        steps = ops.poll_wait_steps(waiting, block_ms, self._node_of, self.interrupted)
        drive(steps, self._perform)

    def _open_blocker(self) -> Any:
        if self._blocker is None:
            try:
                blocker = self.client.client()  # a client on one connection of the pool
            except rex.RedisError as err:
                raise translate(err, "connecting for blocking reads") from err
            try:
                self._blocker_id = blocker.client_id()
            except rex.RedisError as err:
                blocker.close()
                raise translate(err, "connecting for blocking reads") from err
            self._blocker = blocker
        return self._blocker

    def reset_blocker(self) -> None:
        # A blocking connection that failed (or whose server was demoted) is dropped; the
        # next wait opens one where the primary is now, with a new id for CLIENT UNBLOCK.
        old, self._blocker, self._blocker_id = self._blocker, None, None
        if old is None:
            return
        with contextlib.suppress(Exception):
            if old.connection is not None:
                old.connection.disconnect()
            old.close()

    def wake(self) -> None:
        """Interrupt a blocking wait of the consumer thread (from the heartbeat thread): on
        the blocking connection, and on the data connection, where a wait rides in front of
        a fetch (unblocking a client that is not blocked does nothing)."""
        for client_id in (self._blocker_id, self._conn_id):
            if client_id is not None:
                with contextlib.suppress(rex.RedisError):
                    self.client.client_unblock(client_id)

    def close(self) -> None:
        """Give back the data connection, disconnected (it may still WATCH the fences:
        another user of the pool must not get that), close the blocking one."""
        self._drop_conn()
        if self._blocker is not None:
            self._blocker.close()
