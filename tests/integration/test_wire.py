"""The wire writer on a real server: with replies taken straight from the hiredis buffer
(the default) an exchange answers exactly what reading each reply through redis-py's
``read_response`` answers, errors in place included, on both shells."""

from __future__ import annotations

from typing import Any

import pytest

from partitions import AsyncConnection, Connection
from partitions._base.keys import TopicLayout
from partitions._client import wire

pytestmark = pytest.mark.anyio


def commands(key: str) -> list[tuple[Any, ...]]:
    """Small and large replies, an error reply in the middle, nil, an array, a map."""
    return [
        ("DEL", key, f"{key}:h"),
        ("SET", key, "v" * 70000),  # a reply after it spans several socket reads
        ("GET", key),
        ("INCR", key),  # WRONGTYPE-ish: not an integer
        ("HSET", f"{key}:h", "a", "1", "b", "2"),
        ("HGETALL", f"{key}:h"),
        ("GET", f"{key}:missing"),
        *[("HGET", f"{key}:h", "a") for _ in range(40)],
        ("DEL", key, f"{key}:h"),
    ]


def comparable(replies: list[Any]) -> list[Any]:
    return [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else r for r in replies]


def test_sync_fast_and_plain_reads_agree(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    if conn.is_cluster:
        pytest.skip("one connection of a single server")
    key = conn.keys.stream(TopicLayout("wiretest", 2), 0)  # any key: no topic
    cmds = commands(key)
    payload = [wire.pack(c) for c in cmds]
    c = conn.client.connection_pool.get_connection()
    try:
        assert wire._hiredis(c) is not None  # the fast path is what runs by default
        fast = wire.exchange_on(c, payload, len(cmds))
        monkeypatch.setattr(wire, "_hiredis", lambda conn: None)
        plain = wire.exchange_on(c, payload, len(cmds))
    finally:
        conn.client.connection_pool.release(c)
    assert comparable(fast) == comparable(plain)
    assert fast[2] == b"v" * 70000 and isinstance(fast[3], Exception) and fast[6] is None
    assert c.can_read() is False  # nothing left unread on the connection


async def test_async_fast_and_plain_reads_agree(
    aconn: AsyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    if aconn.is_cluster:
        pytest.skip("one connection of a single server")
    key = aconn.keys.stream(TopicLayout("wiretest", 2), 1)
    cmds = commands(key)
    payload = [wire.pack(c) for c in cmds]
    pool = aconn.client.connection_pool
    c = await pool.get_connection()
    try:
        assert wire._hiredis(c) is not None
        fast = await wire.aexchange_on(c, payload, len(cmds))
        monkeypatch.setattr(wire, "_hiredis", lambda conn: None)
        plain = await wire.aexchange_on(c, payload, len(cmds))
        assert await c.can_read() is False
    finally:
        await pool.release(c)
    assert comparable(fast) == comparable(plain)
    assert fast[2] == b"v" * 70000 and isinstance(fast[3], Exception) and fast[6] is None
