"""AsyncConsumer integration tests, mirroring the threaded consumer's key ones: in-order
reads with auto-commit, takeover order after a crash, fencing of a stale owner, dead
letters after max_deliveries, seek, async rebalance callbacks, and cancellation that never
loses or double-acks a record."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from partitions import AsyncConsumer
from partitions._admin.deadletter import DeadLetters
from partitions._base.records import Record
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from tests import helpers
from tests.helpers import drain_async as drain
from tests.helpers import produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = helpers.FAST.with_changes(max_deliveries=3, reclaim_idle_ms=60_000)


def consumer(conn: Connection, **kw: Any) -> AsyncConsumer:
    kw.setdefault("group_settings", FAST)
    return AsyncConsumer(conn, kw.pop("group", "g"), kw.pop("topics", "orders"), **kw)


def pending(conn: Connection, name: str, n: int, group: str = "g") -> int:
    return sum(conn.client.xpending(conn.keys.stream(name, p), group)["pending"] for p in range(n))


def idkey(i: str) -> tuple[int, int]:
    ms, seq = i.split("-")
    return int(ms), int(seq)


def test_reads_everything_in_order_and_auto_commits(conn: Connection) -> None:
    topic(conn)
    produce(conn, "orders", 2000)

    async def main() -> list[Record]:
        async with consumer(conn) as c:
            return await drain(c, 2000)

    got = asyncio.run(main())
    assert len(got) == 2000 and len({(r.partition, r.id) for r in got}) == 2000
    for p in range(4):
        ids = [r.id for r in got if r.partition == p]
        assert ids == sorted(ids, key=idkey)
    assert pending(conn, "orders", 4) == 0  # closing committed the last poll


def test_iteration_acks_when_the_loop_asks_for_more(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 5)

    async def main() -> list[str]:
        seen: list[str] = []
        async with consumer(conn) as c:
            async for r in c:
                seen.append(r.value.decode() if r.value else "")
                if len(seen) == 5:
                    break  # the fifth stays unacked
        return seen

    assert asyncio.run(main()) == [f"v{i}" for i in range(5)]
    assert pending(conn, "orders", 1) == 1


def test_a_new_owner_first_redelivers_the_crashed_owners_unacked_records(
    conn: Connection,
) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 10, keys=1)

    async def main() -> tuple[list[str], list[str]]:
        a = consumer(conn, config=ConsumerConfig(auto_commit=False))
        await a.start()
        first = await drain(a, 10)
        await a.commit(first[:4])
        a._runner.close(leave=False)  # the process dies: no commit, no leave
        produce(conn, "orders", 5, keys=1, start=10)
        async with consumer(conn) as b:
            second = await drain(b, 11, timeout=15)
        return [r.id for r in first], [r.id for r in second]

    first, second = asyncio.run(main())
    assert second[:6] == first[4:]  # the unacked ones first, in id order
    assert len(second) == 11 and second == sorted(second, key=idkey)


def test_a_stale_owner_is_fenced(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 3)

    async def main() -> tuple[int, set[TopicPartition]]:
        async with consumer(conn, config=ConsumerConfig(auto_commit=False)) as c:
            got = await drain(c, 3)
            # Another grant takes the fence (a newer owner): acks are refused.
            conn.client.hset(conn.keys.fence("orders", 0), "g", "intruder 999999")
            with pytest.raises(Exception, match="no longer owns"):
                await c.commit(got)
            return c.refused_acks, await c.assignment()

    refused, owned = asyncio.run(main())
    assert refused == 3 and owned == set()
    assert pending(conn, "orders", 1) == 3


def test_nacked_records_are_dead_lettered_after_max_deliveries(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 1)

    async def main() -> int:
        async with consumer(conn, config=ConsumerConfig(auto_commit=False)) as c:
            deliveries = 0
            end = time.monotonic() + 10
            while time.monotonic() < end and c.dead_lettered == 0:
                for r in await c.poll(timeout=0.2):
                    deliveries += 1
                    await c.nack(r)
            return deliveries

    assert asyncio.run(main()) == FAST.max_deliveries
    letters = DeadLetters(conn).list("orders")
    assert [d.reason for d in letters] == ["max_deliveries"]


def test_seek_and_async_listener(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 5)
    calls: list[tuple[str, set[TopicPartition]]] = []

    class Listener:
        async def on_partitions_assigned(self, assigned: dict[TopicPartition, Any]) -> None:
            await asyncio.sleep(0)
            calls.append(("assigned", set(assigned)))

        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            calls.append(("revoked", set(revoked)))

    async def main() -> list[str]:
        async with consumer(conn, listener=Listener()) as c:
            await drain(c, 5)
            await c.seek("orders", 0, "earliest")
            return [r.id for r in await drain(c, 5)]

    again = asyncio.run(main())
    assert len(again) == 5
    tp = TopicPartition("orders", 0)
    assert calls == [("assigned", {tp}), ("revoked", {tp})]


def test_cancellation_never_loses_or_double_acks(conn: Connection) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 300)

    cut = 0

    async def main() -> list[Record]:
        nonlocal cut
        got: list[Record] = []
        async with consumer(conn, config=ConsumerConfig(fetch_count=7, max_poll_records=7)) as c:
            end = time.monotonic() + 20
            # Deadlines from "cut at the first await" to "usually done": cuts land anywhere
            # in a poll (the read, the hand-out, the ack riding along, the wait).
            delays = itertools.cycle([0.0002, 0.001, 0.002, 0.004, 0.008, 0.05])
            while len({(r.partition, r.id) for r in got}) < 300 and time.monotonic() < end:
                try:
                    async with asyncio.timeout(next(delays)):
                        batch = await c.poll(timeout=0.5)
                except TimeoutError:
                    cut += 1
                    continue  # cut off mid-request: nothing it fetched was handed out
                got += batch
        return got

    got = asyncio.run(main())
    assert cut > 0, "no poll was cut off: the test proved nothing"
    assert len(got) == 300 and len({(r.partition, r.id) for r in got}) == 300
    assert pending(conn, "orders", 2) == 0
