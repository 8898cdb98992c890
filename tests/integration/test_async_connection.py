"""connect_async(): the same servers, checks and Functions calls as connect(), on
redis.asyncio (run on the embedded Valkey, on Redis 7 via PARTSTREAM_TEST_URL, and on the
local cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import pytest
import redis
import redis.asyncio.cluster

from partitions import AsyncConnection, ClientConfig, connect_async
from partitions._base.aiofunctions import AsyncFunctions
from partitions._base.durability import Durability
from partitions._base.errors import (
    ConfigError,
    ConnectionFailedError,
    EvictionPolicyError,
    LibraryMissingError,
    NotEnoughReplicasError,
    PartstreamError,
)
from partitions._base.functions import library_name, version
from partitions._client.connection import Connection, connect
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_connect_async_detects_the_same_server_as_connect(
    client_config: ClientConfig, aconn: AsyncConnection, conn: Connection
) -> None:
    assert aconn.server == conn.server
    assert aconn.is_cluster == conn.is_cluster
    assert aconn.keys.ns == conn.keys.ns == client_config.namespace
    expected = redis.asyncio.cluster.RedisCluster if conn.is_cluster else redis.asyncio.Redis
    assert isinstance(aconn.client, expected)
    assert await aconn.client.set(aconn.keys.ns + ":probe", b"v")
    assert conn.client.get(aconn.keys.ns + ":probe") == b"v"
    assert "AsyncConnection" in repr(aconn)


def _primaries(conn: Connection) -> list[Any]:
    if not conn.is_cluster:
        return [conn.client]
    return [conn.client.get_redis_connection(n) for n in conn.client.get_primaries()]


async def test_fcall_loads_a_missing_library_and_writes_what_the_sync_call_reads(
    aconn: AsyncConnection, conn: Connection
) -> None:
    fence = conn.keys.fence(layout(conn, "t", 4), 3)
    for node in _primaries(conn):  # as on a server restarted without persistence
        with contextlib.suppress(redis.ResponseError):
            node.execute_command("FUNCTION", "DELETE", library_name())
    claimed = await aconn.functions.call("fence", [fence], ["claim", "g", "m1", "5"])
    assert claimed == 1
    assert conn.client.hget(fence, "g") == b"m1 5"
    # The sync shell sees the same library (loaded by the async one) and the same state.
    assert conn.functions.call("fence", [fence], ["claim", "g", "m2", "4"]) == 0
    assert await aconn.functions.call("fence", [fence], ["release", "g", "m1", "5"]) == 1
    assert conn.client.hget(fence, "g") is None
    assert any(version() in row for row in map(str, loaded(conn)))
    with pytest.raises(PartstreamError, match="unknown op") as async_err:
        await aconn.functions.call("fence", [fence], ["bogus", "g", "m1", "1"])
    with pytest.raises(PartstreamError, match="unknown op") as sync_err:
        conn.functions.call("fence", [fence], ["bogus", "g", "m1", "1"])
    assert type(async_err.value) is type(sync_err.value)
    assert str(async_err.value) == str(sync_err.value)


def loaded(conn: Connection) -> list[Any]:
    return [
        lib
        for node in _primaries(conn)
        for lib in node.execute_command("FUNCTION", "LIST", "LIBRARYNAME", library_name())
    ]


async def test_a_durable_call_waits_on_the_same_connection(
    aconn: AsyncConnection, conn: Connection
) -> None:
    fence = conn.keys.fence(layout(conn, "t", 4), 1)
    if aconn.server.replicas == 0:
        # acks="all" with no replica: it ran on the primary, and says nobody confirmed it.
        with pytest.raises(NotEnoughReplicasError, match="on the primary"):
            await aconn.functions.call(
                "fence",
                [fence],
                ["claim", "g", "m1", "7"],
                durability=Durability(acks="all"),
                wait_ms=100,
            )
        assert conn.client.hget(fence, "g") == b"m1 7"
    else:
        reply = await aconn.functions.call(
            "fence", [fence], ["claim", "g", "m1", "7"], durability=Durability(acks="all")
        )
        assert reply == 1 and conn.client.hget(fence, "g") == b"m1 7"


async def test_a_user_who_may_not_load_the_library_is_told_what_to_run(
    client_config: ClientConfig, conn: Connection
) -> None:
    if conn.is_cluster:
        pytest.skip("ACL users are per node on a cluster")
    user = f"{conn.keys.ns}-noload"
    conn.client.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-function|load"
    )
    try:
        with contextlib.suppress(redis.ResponseError):
            conn.client.execute_command("FUNCTION", "DELETE", library_name())
        client = redis.asyncio.Redis.from_url(
            conn.url, username=user, password="pw", socket_timeout=5
        )
        try:
            with pytest.raises(LibraryMissingError, match="partstream functions load"):
                await AsyncFunctions(client).call("fence", [conn.keys.ns + ":f"], [])
        finally:
            await client.aclose()
    finally:
        conn.client.execute_command("ACL", "DELUSER", user)
        conn.functions.load()


async def test_the_embedded_server_starts_without_blocking_the_loop(tmp_path: Any) -> None:
    data_dir = tmp_path / "d"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        aconn = await connect_async(ClientConfig(data_dir=data_dir, namespace="emb"))
    finally:
        ticker.cancel()
    try:
        elapsed = time.monotonic() - started
        assert aconn.url.startswith("unix://") and aconn.server.flavor == "valkey"
        # The loop kept running while the server started (in a thread).
        assert ticks >= max(2, int(elapsed / 0.01) // 4)
        assert await aconn.client.ping()
    finally:
        await aconn.aclose()
        from partitions._client.server import EmbeddedServer

        EmbeddedServer(data_dir).stop()


async def test_bad_settings_are_refused_before_connecting(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        await connect_async(url="http://localhost:1")
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    with pytest.raises(ConfigError, match="rediss://"):
        await connect_async(url="redis://127.0.0.1:1", ssl_ca_certs=str(ca))


async def test_an_unreachable_server_is_a_connection_error() -> None:
    with pytest.raises(ConnectionFailedError):
        await connect_async(url="redis://127.0.0.1:1", connect_timeout=1.0)


async def test_an_evicting_server_is_refused_when_strict(
    client_config: ClientConfig, conn: Connection
) -> None:
    if conn.is_cluster or os.environ.get("PARTSTREAM_TEST_URL"):
        pytest.skip("changes the server's policy: only on the private embedded server")
    conn.client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(EvictionPolicyError):
            await connect_async(client_config, strict_eviction_policy=True)
        with pytest.warns(RuntimeWarning, match="noeviction"):
            aconn = await connect_async(client_config)
        await aconn.aclose()
    finally:
        conn.client.config_set("maxmemory-policy", "noeviction")


def test_connect_and_connect_async_agree_on_a_sync_only_caller(client_config: ClientConfig) -> None:
    # connect_async is a coroutine function callable from plain code through asyncio.run.
    async def open_and_close() -> str:
        async with await connect_async(client_config) as aconn:
            return aconn.server.describe()

    with connect(client_config) as c:
        assert asyncio.run(open_and_close()) == c.server.describe()
