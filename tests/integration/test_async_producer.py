"""AsyncProducer: the sync producer's key behaviours on the asyncio shell (the embedded Valkey,
Redis 7 via PARTSTREAM_TEST_URL, the local cluster; own servers for the OOM cases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from partitions import (
    AsyncConnection,
    AsyncProducer,
    BufferFullError,
    ClientConfig,
    ClosedError,
    NotEnoughReplicasError,
    PartstreamError,
    ProducerConfig,
    RecordTooLargeError,
    ServerOutOfMemoryError,
    UnknownTopicError,
    WrongTypeError,
    connect_async,
)
from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.connection import Connection
from partitions._client.nodes import node_for_key
from partitions._client.wire import is_connected
from tests.helpers import layout, own_server
from tests.integration.test_producer_outages import _fill

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(90)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aconn(client_config: ClientConfig, conn: Connection) -> AsyncIterator[AsyncConnection]:
    async with await connect_async(client_config) as c:
        yield c


def values(conn: Connection, topic: str, partition: int | None = None) -> list[bytes]:
    parts = None if partition is None else [partition]
    return [r.value for r in replay(conn, topic, partitions=parts) if r.value is not None]


async def test_send_await_flush_and_close_keep_per_key_order(
    conn: Connection, aconn: AsyncConnection
) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 4))
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=2, batch_size=50)) as p:
        futures = [
            await p.send("orders", f"k{i % 7}:{i}".encode(), key=f"k{i % 7}") for i in range(700)
        ]
        first = await futures[0]
        assert first.topic == "orders" and first.partition == p_for(conn, "k0")
        meta = await p.send_and_wait("orders", b"h", key="k1", headers={"trace": "x"})
        assert meta.partition == p_for(conn, "k1")
        assert await p.flush(30)
        assert all(f.done() for f in futures)
        late = await p.send("orders", b"late", key="k2")
    assert late.done()  # close() flushed
    by_key: dict[str, list[int]] = {}
    headers = None
    for record in replay(conn, "orders"):
        assert record.value is not None
        if record.value == b"h":
            headers = record.headers
            continue
        if record.value == b"late":
            continue
        key, _, n = record.value.decode().partition(":")
        assert record.key == key.encode() or record.key == key
        by_key.setdefault(key, []).append(int(n))
    assert sum(len(v) for v in by_key.values()) == 700
    assert all(got == sorted(got) for got in by_key.values())
    assert headers == {"trace": "x"} or headers == {"trace": b"x"}
    metas = [f.result() for f in futures]
    assert len({(m.partition, m.id) for m in metas}) == 700


def p_for(conn: Connection, key: str) -> int:
    from partitions._producer.producer import Producer

    with Producer(conn) as p:
        partition = p.partition_for("orders", key)
    assert partition is not None
    return partition


async def test_bad_input_is_refused_before_queuing(
    conn: Connection, aconn: AsyncConnection
) -> None:
    TopicAdmin(conn).create(TopicSpec("bad", 2))
    async with AsyncProducer(aconn, ProducerConfig(max_record_bytes=1000)) as p:
        with pytest.raises(UnknownTopicError):
            await p.send("nosuch", b"v", key="k")
        with pytest.raises(RecordTooLargeError):
            await p.send("bad", b"x" * 2000, key="k")
        with pytest.raises(PartstreamError):
            await p.send("bad", b"v", partition=5)
        assert (await p.send_and_wait("bad", b"ok", key="k")).topic == "bad"
    assert values(conn, "bad") == [b"ok"]
    with pytest.raises(ClosedError):
        await p.send("bad", b"after", key="k")


async def test_refused_batch_fails_alone_and_does_not_wedge_the_next(
    conn: Connection, aconn: AsyncConnection
) -> None:
    TopicAdmin(conn).create(TopicSpec("wedge", 2))
    stream0 = conn.keys.stream(layout(conn, "wedge"), 0)
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=50)) as p:
        await p.send_and_wait("wedge", "first", partition=0)
        conn.client.delete(stream0)
        conn.client.set(stream0, "someone else's string")
        start = time.monotonic()
        refused = [await p.send("wedge", f"r{i}", partition=0) for i in range(5)]
        other = [await p.send("wedge", f"o{i}", partition=1) for i in range(5)]
        for f in refused:
            with pytest.raises(WrongTypeError):
                await f
        assert time.monotonic() - start < 5  # a refusal is not retried
        assert [(await f).partition for f in other] == [1] * 5
        conn.client.delete(stream0)
        nxt = [await p.send("wedge", f"n{i}", partition=0) for i in range(3)]
        assert [(await f).partition for f in nxt] == [0] * 3
    assert values(conn, "wedge", 0) == [b"n0", b"n1", b"n2"]
    assert values(conn, "wedge", 1) == [b"o0", b"o1", b"o2", b"o3", b"o4"]


async def test_lost_sequence_fails_one_batch_loudly_then_recovers(
    conn: Connection, aconn: AsyncConnection
) -> None:
    TopicAdmin(conn).create(TopicSpec("seq", 1))
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=0)) as p:
        pid = p.producer_id
        await p.send_and_wait("seq", "a", key="k")
        await p.send_and_wait("seq", "b", key="k")
        conn.client.delete(conn.keys.seq(layout(conn, "seq"), 0))
        with pytest.raises(PartstreamError, match="OUTOFSEQ"):
            await p.send_and_wait("seq", "c", key="k")
        assert (await p.send_and_wait("seq", "d", key="k")).partition == 0
        assert p.producer_id != pid  # a new identity after the server forgot the old one
    assert values(conn, "seq") == [b"a", b"b", b"d"]


async def test_cancelling_a_waiting_task_neither_loses_nor_duplicates(
    conn: Connection, aconn: AsyncConnection
) -> None:
    """Tasks awaiting their records' futures are cancelled (task.cancel(), asyncio timeouts)
    while the server is paused: every record is still appended, exactly once."""
    TopicAdmin(conn).create(TopicSpec("cancel", 1))
    node = node_for_key(conn, conn.keys.stream(layout(conn, "cancel"), 0))
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=1, batch_size=10)) as p:
        # Long enough for a loaded machine to reach the waits below inside it; UNPAUSE ends it.
        node.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        try:
            waiters = [
                asyncio.create_task(p.send_and_wait("cancel", f"v{i}", key="k")) for i in range(30)
            ]
            await asyncio.sleep(0.2)
            for task in waiters[::2]:
                task.cancel()
            futures = [await p.send("cancel", f"w{i}", key="k") for i in range(30)]
            for f in futures[:10]:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(f, 0.01)  # cancels only this wait
        finally:
            node.execute_command("CLIENT", "UNPAUSE")
        done = await asyncio.gather(*waiters, return_exceptions=True)
        cancelled = done[::2]
        assert all(isinstance(d, asyncio.CancelledError) for d in cancelled), [
            repr(d) for d in cancelled if not isinstance(d, asyncio.CancelledError)
        ]
        assert all(not isinstance(d, BaseException) for d in done[1::2])
        metas = [await f for f in futures]  # the timed-out waits' records too
        assert [m.partition for m in metas] == [0] * 30
    got = values(conn, "cancel")
    # Exactly once each; concurrent tasks have no order among them, one task's sends do.
    assert sorted(got) == sorted([f"v{i}".encode() for i in range(30)] +
                                 [f"w{i}".encode() for i in range(30)])  # fmt: skip
    assert [v for v in got if v.startswith(b"w")] == [f"w{i}".encode() for i in range(30)]


async def test_back_pressure_blocks_then_raises(conn: Connection, aconn: AsyncConnection) -> None:
    TopicAdmin(conn).create(TopicSpec("bp", 1))
    cfg = ProducerConfig(batch_size=10, buffer_records=10, block_timeout=0.3, linger_ms=0)
    node = node_for_key(conn, conn.keys.stream(layout(conn, "bp"), 0))
    async with AsyncProducer(aconn, cfg) as p:
        node.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        try:
            start = time.monotonic()
            with pytest.raises(BufferFullError):
                for i in range(1000):
                    await p.send("bp", str(i), key="k")
            assert time.monotonic() - start >= 0.25
        finally:
            node.execute_command("CLIENT", "UNPAUSE")
    assert (
        conn.client.xlen(conn.keys.stream(layout(conn, "bp"), 0)) >= 10
    )  # nothing accepted was dropped


async def test_acks_all_without_replicas_fails_typed_after_the_timeout(
    client_config: ClientConfig, conn: Connection
) -> None:
    """acks="all" pipelines a WAIT after the batches: with no replica to confirm, the records
    fail with NotEnoughReplicasError once the delivery timeout ran out (retried until then)."""
    if conn.server.replicas:
        pytest.skip("the server has replicas")
    TopicAdmin(conn).create(TopicSpec("acks", 1))
    fast = ClientConfig(url=client_config.url, namespace=client_config.namespace,
                        socket_timeout=0.5)  # fmt: skip
    cfg = ProducerConfig(acks="all", linger_ms=0, delivery_timeout_ms=1200)
    async with await connect_async(fast) as c, AsyncProducer(c, cfg) as p:
        start = time.monotonic()
        with pytest.raises(NotEnoughReplicasError):
            await p.send_and_wait("acks", b"v", key="k")
        assert time.monotonic() - start >= 1.0
    # Appended on the primary (in doubt), once: retries carried the same sequence number.
    assert values(conn, "acks") == [b"v"]


# -- out of memory (own servers) ---------------------------------------------------------------
async def test_oom_is_retried_then_delivered_or_fails_typed() -> None:
    from partitions._client.connection import connect

    with (
        own_server(["--maxmemory-policy", "noeviction"]) as srv,
        redis.Redis(host="127.0.0.1", port=srv.port) as admin,
    ):
        cfg = ClientConfig(url=f"redis://{srv.host_port}", namespace="aoom", socket_timeout=1.0)
        with connect(cfg) as conn:
            TopicAdmin(conn).create(TopicSpec("mem", 2))
            fillers = _fill(admin)
            async with await connect_async(cfg) as c:
                async with AsyncProducer(c, ProducerConfig(linger_ms=1)) as p:
                    futures = [await p.send("mem", f"v{i}", key=f"k{i % 3}") for i in range(60)]
                    await asyncio.sleep(1.0)
                    assert not any(f.done() for f in futures)  # blocked, retrying
                    admin.delete(*fillers)
                    metas = [await f for f in futures]
                admin.config_set("maxmemory", 0)
                fillers = _fill(admin)
                short = ProducerConfig(linger_ms=1, delivery_timeout_ms=1500)
                async with AsyncProducer(c, short) as p:
                    with pytest.raises(ServerOutOfMemoryError):
                        await p.send_and_wait("mem", b"x", key="k0")
                admin.delete(*fillers)
            got = {(r.partition, r.id): r.value for r in replay(conn, "mem")}
        assert [got[(m.partition, m.id)] for m in metas] == [f"v{i}".encode() for i in range(60)]
        assert len(got) == 60


async def test_send_many_queues_in_parts_and_checks_everything_first(
    conn: Connection, aconn: AsyncConnection
) -> None:
    """``send_many``: every record checked before any is queued; a list longer than the
    buffer goes in parts that fit it; per-key order and one future per record."""
    TopicAdmin(conn).create(TopicSpec("many", 4))
    cfg = ProducerConfig(linger_ms=2, batch_size=50, buffer_records=300)
    async with AsyncProducer(aconn, cfg) as p:
        bad = [(f"k{i % 5}:{i}".encode(), f"k{i % 5}") for i in range(100)]
        bad[60] = (b"x" * (cfg.max_record_bytes + 1), "k0")
        with pytest.raises(RecordTooLargeError):
            await p.send_many("many", bad)
        records = [(f"k{i % 5}:{i}".encode(), f"k{i % 5}") for i in range(2000)]
        futures = await p.send_many("many", records)
        assert await p.flush(30)
        metas = [await f for f in futures]
    assert len(metas) == 2000 and len({(m.partition, m.id) for m in metas}) == 2000
    assert all(m.partition == p_for_topic(conn, "many", f"k{i % 5}") for i, m in enumerate(metas))
    by_key: dict[str, list[int]] = {}
    for v in values(conn, "many"):
        key, _, n = v.decode().partition(":")
        by_key.setdefault(key, []).append(int(n))
    assert sum(len(v) for v in by_key.values()) == 2000  # nothing of the refused call
    assert all(got == sorted(got) for got in by_key.values())


def p_for_topic(conn: Connection, topic: str, key: str) -> int:
    from partitions._producer.producer import Producer

    with Producer(conn) as p:
        partition = p.partition_for(topic, key)
    assert partition is not None
    return partition


async def test_the_sender_task_keeps_its_connection_across_back_to_back_rounds(
    conn: Connection, aconn: AsyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the threaded sender: on a single server a busy sender task takes a connection
    from the pool once, not once a round (~20 us of CPU a round on asyncio), and gives it
    back before it waits. Each round queues the next record while it is on the wire, so
    the sender finds work each time it drains: 20 rounds back to back."""
    if aconn.is_cluster:
        pytest.skip("a cluster's sender takes a node's connection each round")
    import partitions._client.wire as wire
    import partitions._producer.aio as aio

    pool = aconn.client.connection_pool
    rounds, gets, queued = [0], [0], []
    real_exchange, real_get = aio.aexchange_on, pool.get_connection
    TopicAdmin(conn).create(TopicSpec("held", 4))
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=0)) as p:
        await p.send_and_wait("held", b"warm", key=b"w")

        async def exchange_on(c: object, payload: list[bytes], expect: int) -> list[object]:
            rounds[0] += 1
            if rounds[0] < 20:
                queued.append(await p.send("held", b"v%d" % rounds[0], key=b"%d" % rounds[0]))
            return await real_exchange(c, payload, expect)

        async def get_connection(*args: object, **kwargs: object) -> object:
            gets[0] += 1
            return await real_get(*args, **kwargs)

        monkeypatch.setattr(aio, "aexchange_on", exchange_on)
        monkeypatch.setattr(wire, "aexchange_on", exchange_on)  # (a pool's exchange calls it)
        monkeypatch.setattr(pool, "get_connection", get_connection)
        queued.append(await p.send("held", b"v0", key=b"0"))
        async with asyncio.timeout(10):
            while len(queued) < 20 or not all(f.done() for f in queued):
                await asyncio.sleep(0.01)
        assert rounds[0] >= 20
        assert gets[0] <= 2, (gets[0], rounds[0])  # (at most one a round on the wire)
        async with asyncio.timeout(5):
            while getattr(pool, "_in_use_connections", ()):
                await asyncio.sleep(0.01)  # (given back before the sender task waits)
    assert len(values(conn, "held")) == 21


async def test_a_kept_connection_that_broke_is_replaced(
    conn: Connection, aconn: AsyncConnection
) -> None:
    """A connection the sender task kept and that was closed under it (a server restart,
    an idle timeout) goes back to the pool, and the next round takes a working one."""
    if aconn.is_cluster:
        pytest.skip("a cluster's sender takes a node's connection each round")
    TopicAdmin(conn).create(TopicSpec("broke", 2))
    pool = aconn.client.connection_pool
    async with AsyncProducer(aconn, ProducerConfig(linger_ms=0)) as p:
        first = await p.send_and_wait("broke", b"a", key=b"k")
        kept = await pool.get_connection()
        await kept.disconnect()
        released: list[object] = []
        real_release = pool.release

        async def release(c: object) -> None:
            released.append(c)
            await real_release(c)

        pool.release = release  # type: ignore[method-assign]
        try:
            p._held.append(kept)  # as if a round had kept it and it broke since
            meta = await p.send_and_wait("broke", b"b", key=b"k")
        finally:
            del pool.release
        assert meta.partition == first.partition and released[0] is kept
        assert all(is_connected(c) for c in p._held)
    assert values(conn, "broke") == [b"a", b"b"]
