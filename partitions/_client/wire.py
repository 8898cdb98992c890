"""The one raw wire writer: RESP packing and "write once, read N replies" on one connection.

redis-py's pipelines build a Python object per command and write each separately; the hot
paths (the producer's batches, the consumer's fetch) instead pack their calls into one
buffer, write it with one ``sendall`` and read the replies in order. This module is where
that happens, for both shells:

* :func:`bulk`, :func:`pack` and :data:`ASKING` build RESP;
* :func:`exchange` (threads, a ``redis.ConnectionPool``; :func:`exchange_on` on a connection
  the caller holds) and :func:`aexchange` (asyncio, a :class:`AsyncLink` over a
  ``redis.asyncio`` pool or cluster node) write and read;
* :class:`Replies` is the convention both share for what comes back: a server error reply
  stays in place as the redis-py exception (a refusal: nothing of that call ran); a broken
  connection fills the unread places with the connection error (those calls are in doubt),
  except when no connection could be opened (:class:`NotSentError`: nothing was written).

Callers translate errors into partstream's tree where they know what the call was; cluster
redirections are decided in :mod:`partitions._client.nodes`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
import redis.exceptions as rex
from redis._parsers.hiredis import NOT_ENOUGH_DATA

# hiredis >= 3.2 returns RESP3 push messages as this type (None: an older hiredis).
PUSH: Any = getattr(hiredis, "PushNotification", None)

__all__ = [
    "ASKING",
    "AsyncLink",
    "NotSentError",
    "Replies",
    "aexchange",
    "aexchange_on",
    "broken_reply",
    "bulk",
    "exchange",
    "exchange_on",
    "is_connected",
    "one_write",
    "pack",
    "packed",
]

ASKING = b"*1\r\n$6\r\nASKING\r\n"

# A connection that broke, timed out or could not be opened.
CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError, OSError)


class NotSentError(rex.ConnectionError):
    """No connection could be opened, so nothing of the call was written (never in doubt)."""


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} as a command argument")


def pack(args: Iterable[Any]) -> bytes:
    """One command (bytes, str, int or float arguments) as a RESP array."""
    parts = [bulk(_arg(a)) for a in args]
    return b"*%d\r\n%b" % (len(parts), b"".join(parts))


def packed(commands: Iterable[Any]) -> list[bytes]:
    """Each command packed (:func:`pack`), or as it is where it is packed RESP already."""
    return [c if isinstance(c, bytes) else pack(c) for c in commands]


class Replies:
    """The replies of one exchange, ``expect`` of them, under the shared error convention."""

    __slots__ = ("expect", "out")

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.out: list[Any] = []

    def wanted(self) -> bool:
        return len(self.out) < self.expect

    def add(self, reply: Any) -> None:
        self.out.append(reply)

    def broken(self, err: BaseException) -> None:
        """The connection broke before every reply was read: the rest are in doubt."""
        if isinstance(err, rex.BusyLoadingError):
            # redis-py drops the connection on a LOADING reply: that call was refused, the
            # ones after it are unread, so in doubt.
            self.out.append(err)
            err = rex.ConnectionError(f"connection dropped after a LOADING reply ({err})")
        self.out += [err] * (self.expect - len(self.out))

    @staticmethod
    def not_sent(err: BaseException, expect: int) -> list[Any]:
        return [NotSentError(f"{type(err).__name__}: {err}")] * expect


def one_write(payload: list[bytes]) -> list[bytes]:
    """``payload`` as one buffer: redis-py's sync connection makes a ``sendall`` of each item,
    and with TCP_NODELAY each small command then leaves as a packet of its own, which the
    server reads and serves one at a time (a fetch of 16 partitions was ~50 syscalls each
    side instead of one)."""
    return [b"".join(payload)] if len(payload) > 1 else payload


def exchange(pool: Any, payload: list[bytes], expect: int) -> list[Any]:
    """Write ``payload`` in one go on a connection of ``pool``, read ``expect`` replies."""
    try:
        conn = pool.get_connection()
    except CONNECTION_ERRORS as err:
        return Replies.not_sent(err, expect)
    try:
        return exchange_on(conn, payload, expect)
    finally:
        pool.release(conn)


def exchange_on(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
    """:func:`exchange` on a connection the caller holds (e.g. the consumer's own): after a
    connection error it is disconnected, and the error stands for every unread reply."""
    replies = Replies(expect)
    parser = _hiredis(conn)
    try:
        conn.send_packed_command(one_write(payload), check_health=False)
        while replies.wanted():
            try:
                replies.add(conn.read_response())
            except rex.ResponseError as err:
                replies.add(err)
            if parser is not None and (push := take_buffered(parser._reader, replies)):
                parser.handle_push_response(push)
    except CONNECTION_ERRORS as err:
        conn.disconnect()
        replies.broken(err)
    return replies.out


def is_connected(conn: Any) -> bool:
    """Whether a redis-py connection (sync or asyncio) holds an open socket: redis-py >= 5.1
    says so itself, the sync connection of 5.0 only by its socket."""
    if isinstance(getattr(type(conn), "is_connected", None), property):
        return bool(conn.is_connected)
    return getattr(conn, "_sock", None) is not None


def _hiredis(conn: Any) -> Any:
    """``conn``'s redis-py hiredis parser, whose replies :func:`take_buffered` can take
    straight from its reader; None for any other parser (then every reply goes through
    ``read_response``)."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not hasattr(reader, "gets") or not hasattr(parser, "handle_push_response"):
        return None
    return parser


def take_buffered(reader: Any, replies: Replies) -> Any:
    """Move the complete replies already in the hiredis ``reader``'s buffer into ``replies``
    without a read (a fetch's dozens of small replies arrive in one segment: going through
    ``read_response`` for each, with its timeout scope and checks, costs more than parsing
    them). Mirrors ``read_response``: an error reply stays in place as its exception, a
    connection error raises. A RESP3 push message (not a reply) is returned for the caller
    to hand to the parser's push handler, as ``read_response`` would; None otherwise."""
    out, gets = replies.out, reader.gets
    need = replies.expect - len(out)
    while need > 0:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            return None
        if type(reply) is not bytes:  # (most replies are: a status, an id, a value)
            if PUSH is not None and isinstance(reply, PUSH):
                return reply
            if isinstance(reply, rex.ConnectionError):
                raise reply
            if isinstance(reply, list) and reply and isinstance(reply[0], rex.ConnectionError):
                raise reply[0]
        out.append(reply)
        need -= 1
    return None


class AsyncLink:
    """Where an asyncio exchange takes its connection: a ``redis.asyncio`` connection pool
    (``get_connection``/``release`` are coroutines) or a cluster node (``acquire_connection``
    / ``release`` are plain calls)."""

    __slots__ = ("_node", "_pool")

    def __init__(self, *, pool: Any = None, node: Any = None) -> None:
        self._pool = pool
        self._node = node

    async def acquire(self) -> Any:
        if self._pool is not None:
            return await self._pool.get_connection()
        conn = self._node.acquire_connection()
        if not conn.is_connected:
            await conn.connect()
        return conn

    async def release(self, conn: Any) -> None:
        if self._pool is not None:
            await self._pool.release(conn)
        else:
            self._node.release(conn)


async def aexchange(link: AsyncLink, payload: list[bytes], expect: int) -> list[Any]:
    """:func:`exchange` on asyncio. A cancellation in the middle leaves the connection's
    state unknown: it is disconnected (never reused half-read) and the cancellation goes on."""
    try:
        conn = await link.acquire()
    except CONNECTION_ERRORS as err:
        return Replies.not_sent(err, expect)
    try:
        return await aexchange_on(conn, payload, expect)
    finally:
        await link.release(conn)


async def aexchange_on(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
    """:func:`exchange_on` on asyncio, on a connection the caller holds; cut off
    (cancelled) mid-way the connection is disconnected and the cancellation goes on."""
    replies = Replies(expect)
    parser = _hiredis(conn)
    try:
        await conn.send_packed_command(payload, check_health=False)
        while replies.wanted():
            try:
                replies.add(await conn.read_response())
            except rex.ResponseError as err:
                replies.add(err)
            if parser is not None and (push := take_buffered(parser._reader, replies)):
                await parser.handle_push_response(push)
    except CONNECTION_ERRORS as err:
        await conn.disconnect()
        replies.broken(err)
    except BaseException:
        await conn.disconnect()
        raise
    return replies.out


def broken_reply(replies: list[Any]) -> BaseException | None:
    """The connection error that stands for unread replies of an exchange, if one does."""
    for reply in replies:
        if isinstance(reply, CONNECTION_ERRORS):
            return reply
    return None
