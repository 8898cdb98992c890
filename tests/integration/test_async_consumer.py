"""AsyncConsumer integration tests, mirroring the threaded consumer's key ones: in-order
reads with auto-commit, takeover order after a crash, fencing of a stale owner, dead
letters after max_deliveries, seek, async rebalance callbacks (revoked before assigned, a
commit inside on_partitions_revoked), heartbeats that go on while the application awaits,
close that commits and leaves even when cancelled, and cancellation that never loses or
double-acks a record. Cluster-ready: ``python -m tests`` runs it on a local cluster too."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from partitions import AsyncConnection, AsyncConsumer, ClientConfig, connect_async
from partitions._admin.deadletter import DeadLetters
from partitions._admin.groups import GroupAdmin
from partitions._base.errors import ClosedError, ConfigError
from partitions._base.records import Record
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from tests import helpers
from tests.helpers import drain_async as drain
from tests.helpers import layout, produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = helpers.FAST.with_changes(max_deliveries=3, reclaim_idle_ms=60_000)


def consumer(aconn: AsyncConnection, **kw: Any) -> AsyncConsumer:
    kw.setdefault("group_settings", FAST)
    return AsyncConsumer(aconn, kw.pop("group", "g"), kw.pop("topics", "orders"), **kw)


def run(client_config: ClientConfig, main: Any) -> Any:
    """``asyncio.run(main(aconn))`` on a fresh AsyncConnection to the test's server."""

    async def opened() -> Any:
        async with await connect_async(client_config) as aconn:
            return await main(aconn)

    return asyncio.run(opened())


def pending(conn: Connection, name: str, n: int, group: str = "g") -> int:
    return sum(
        conn.client.xpending(conn.keys.stream(layout(conn, name), p), group)["pending"]
        for p in range(n)
    )


def dead_letters(conn: Connection, name: str = "orders", n: int = 2) -> list[tuple[bytes, bytes]]:
    """(value, reason) of each dead letter of ``name``'s ``n`` partitions."""
    dlqs = [conn.keys.dlq(layout(conn, name), p) for p in range(n)]
    return [(f.get(b"value", b""), f[b"dlq.reason"]) for key in dlqs
            for _, f in conn.client.xrange(key) if b"dlq.reason" in f]  # fmt: skip


def idkey(i: str) -> tuple[int, int]:
    ms, seq = i.split("-")
    return int(ms), int(seq)


def test_reads_everything_in_order_and_auto_commits(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn)
    produce(conn, "orders", 2000)

    async def main(aconn: AsyncConnection) -> list[Record]:
        async with consumer(aconn) as c:
            return await drain(c, 2000)

    got = run(client_config, main)
    assert len(got) == 2000 and len({(r.partition, r.id) for r in got}) == 2000
    for p in range(4):
        ids = [r.id for r in got if r.partition == p]
        assert ids == sorted(ids, key=idkey)
    assert pending(conn, "orders", 4) == 0  # closing committed the last poll


def test_iteration_acks_when_the_loop_asks_for_more(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 5)

    async def main(aconn: AsyncConnection) -> list[str]:
        seen: list[str] = []
        async with consumer(aconn) as c:
            async for r in c:
                seen.append(r.value.decode() if r.value else "")
                if len(seen) == 5:
                    break  # the fifth stays unacked
        return seen

    assert run(client_config, main) == [f"v{i}" for i in range(5)]
    assert pending(conn, "orders", 1) == 1


def test_a_new_owner_first_redelivers_the_crashed_owners_unacked_records(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 10, keys=1)

    async def main(aconn: AsyncConnection) -> tuple[list[str], list[str]]:
        a = consumer(aconn, config=ConsumerConfig(auto_commit=False))
        await a.start()
        first = await drain(a, 10)
        await a.commit(first[:4])
        await a._runner.close(leave=False)  # the process dies: no commit, no leave
        produce(conn, "orders", 5, keys=1, start=10)
        async with consumer(aconn) as b:
            second = await drain(b, 11, timeout=15)
        return [r.id for r in first], [r.id for r in second]

    first, second = run(client_config, main)
    assert second[:6] == first[4:]  # the unacked ones first, in id order
    assert len(second) == 11 and second == sorted(second, key=idkey)


def test_a_stale_owner_is_fenced(conn: Connection, client_config: ClientConfig) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 3)

    async def main(aconn: AsyncConnection) -> tuple[int, set[TopicPartition]]:
        async with consumer(aconn, config=ConsumerConfig(auto_commit=False)) as c:
            got = await drain(c, 3)
            # Another grant takes the fence (a newer owner): acks are refused.
            conn.client.hset(conn.keys.fence(layout(conn, "orders"), 0), "g", "intruder 999999")
            with pytest.raises(Exception, match="no longer owns"):
                await c.commit(got)
            return c.refused_acks, await c.assignment()

    refused, owned = run(client_config, main)
    assert refused == 3 and owned == set()
    assert pending(conn, "orders", 1) == 3


def test_nacked_records_are_dead_lettered_after_max_deliveries(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 1)

    async def main(aconn: AsyncConnection) -> int:
        async with consumer(aconn, config=ConsumerConfig(auto_commit=False)) as c:
            deliveries = 0
            end = time.monotonic() + 10
            while time.monotonic() < end and c.dead_lettered == 0:
                for r in await c.poll(timeout=0.2):
                    deliveries += 1
                    await c.nack(r)
            return deliveries

    assert run(client_config, main) == FAST.max_deliveries
    letters = DeadLetters(conn).list("orders")
    assert [d.reason for d in letters] == ["max_deliveries"]


def test_seek_and_async_listener(conn: Connection, client_config: ClientConfig) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 5)
    calls: list[tuple[str, set[TopicPartition]]] = []

    class Listener:
        async def on_partitions_assigned(self, assigned: dict[TopicPartition, Any]) -> None:
            await asyncio.sleep(0)
            calls.append(("assigned", set(assigned)))

        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            calls.append(("revoked", set(revoked)))

    async def main(aconn: AsyncConnection) -> list[str]:
        async with consumer(aconn, listener=Listener()) as c:
            await drain(c, 5)
            await c.seek("orders", 0, "earliest")
            return [r.id for r in await drain(c, 5)]

    again = run(client_config, main)
    assert len(again) == 5
    tp = TopicPartition("orders", 0)
    assert calls == [("assigned", {tp}), ("revoked", {tp})]


def test_cancellation_never_loses_or_double_acks(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 100)

    cut = 0
    cancelled: list[asyncio.Future[list[Record]]] = []  # polls taken as cut off

    async def cut_off(c: AsyncConsumer, how: tuple[str, float]) -> list[Record] | None:
        """One poll, cut off by ``asyncio.timeout`` (after ``how[1]`` s: 0 is the first await)
        or by ``task.cancel()`` after ``how[1]`` turns of the loop; None if it was cut."""
        kind, n = how
        if kind == "timeout":
            try:
                async with asyncio.timeout(n):
                    return await c.poll(timeout=0.5)
            except TimeoutError:
                return None
        task = asyncio.ensure_future(c.poll(timeout=0.5))
        for _ in range(int(n)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            cancelled.append(task)  # taken as cut off: checked at the end (the message)
            return None

    def trickle() -> None:
        # The rest arrives while the consumer polls: polls that wait for records get cut
        # mid-wait and mid-read (a loopback server otherwise answers before the loop turns,
        # so a poll of buffered or at-once records can finish inside any cut).
        for start in range(100, 300, 10):
            time.sleep(0.03)
            produce(conn, "orders", 10, start=start)

    async def main(aconn: AsyncConnection) -> list[Record]:
        nonlocal cut
        got: list[Record] = []
        async with consumer(aconn, config=ConsumerConfig(fetch_count=7, max_poll_records=7)) as c:
            feeder = asyncio.ensure_future(asyncio.to_thread(trickle))
            end = time.monotonic() + 20
            # From "cut at the first await" to "usually done": cuts land anywhere in a poll
            # (the read, the hand-out, the ack riding along, the wait). A loopback server
            # answers within one turn of the loop, so turns, not times, place most cuts.
            hows = itertools.cycle(
                [("timeout", 0.0), ("cancel", 1), ("cancel", 2), ("cancel", 3),
                 ("cancel", 5), ("timeout", 0.001), ("cancel", 8), ("timeout", 0.05)]
            )  # fmt: skip
            while len({(r.partition, r.id) for r in got}) < 300 and time.monotonic() < end:
                batch = await cut_off(c, next(hows))
                if batch is None:
                    cut += 1  # cut off mid-request: nothing it fetched was handed out
                    continue
                got += batch
            await feeder
        return got

    started = time.monotonic()
    got = run(client_config, main)
    assert cut > 0, "no poll was cut off: the test proved nothing"
    # What a failure needs to be read (it was seen once in CI, 299 of 300): which records,
    # whether they are still pending, and whether a poll taken as cut off (its await raised
    # CancelledError) still ended with records: handed out to nobody.
    missing = {b"v%d" % i for i in range(300)} - {r.value for r in got}
    orphans = [t.result() for t in cancelled if t.done() and not t.cancelled()
               and t.exception() is None and t.result()]  # fmt: skip
    why = (f"missing {sorted(missing)[:10]}, pending {pending(conn, 'orders', 2)}, "
           f"{time.monotonic() - started:.1f} s, cut {cut}, cut polls that returned records "
           f"{[[r.value for r in b] for b in orphans]}, dead {dead_letters(conn)}")  # fmt: skip
    assert len(got) == 300 and len({(r.partition, r.id) for r in got}) == 300, why
    assert pending(conn, "orders", 2) == 0
    # Cut-off hand-outs were never made: none of these healthy records is counted as poison
    # (tests/integration/test_lost_handouts.py pins it down deterministically).
    assert dead_letters(conn) == [], why


def test_it_takes_an_async_connection_and_checks_its_arguments(
    conn: Connection, client_config: ClientConfig
) -> None:
    with pytest.raises(ConfigError, match="AsyncConnection"):
        AsyncConsumer(conn, "g", "orders")  # type: ignore[arg-type]

    async def main(aconn: AsyncConnection) -> None:
        with pytest.raises(ConfigError):
            AsyncConsumer(aconn, "g", [])
        with pytest.raises(ConfigError):
            AsyncConsumer(aconn, "bad group{", "orders")
        with pytest.raises(ClosedError, match="not started"):
            await AsyncConsumer(aconn, "g", "orders").poll()

    run(client_config, main)
    assert not GroupAdmin(conn).list()  # nothing was written


# A session long enough that a revocation never times out while the test's loop is busy.
SLOWER = FAST.with_changes(session_timeout_ms=6000, heartbeat_interval_ms=300)


def test_a_commit_in_on_partitions_revoked_is_what_the_new_owner_starts_from(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=4)
    produce(conn, "orders", 40)
    events: list[tuple[str, set[TopicPartition], float]] = []

    async def main(aconn: AsyncConnection) -> tuple[list[Record], list[Record], int]:
        manual = ConsumerConfig(auto_commit=False)

        class First:
            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                events.append(("a-assigned", set(assigned), time.monotonic()))

            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await a.commit()  # still ours: the commit goes through
                events.append(("a-revoked", set(revoked), time.monotonic()))

        class Second:
            def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                events.append(("b-assigned", set(assigned), time.monotonic()))

            def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                pass

        a = consumer(aconn, config=manual, listener=First(), group_settings=SLOWER)
        await a.start()
        first = await drain(a, 40)
        left_pending = pending(conn, "orders", 4)
        b = consumer(aconn, config=manual, listener=Second(), group_settings=SLOWER)
        await b.start()
        second: list[Record] = []
        end = time.monotonic() + 15
        while time.monotonic() < end and not any(e[0] == "b-assigned" and e[1] for e in events):
            await a.poll(timeout=0.05)  # the revocation is applied (awaited) in here
            second += await b.poll(timeout=0.05)
        second += await drain(b, 1, timeout=0.5)
        await b.close()
        await a.close()
        return first, second, left_pending

    first, second, left_pending = run(client_config, main)
    assert len(first) == 40 and left_pending == 40
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "a-assigned" and "a-revoked" in kinds and "b-assigned" in kinds
    (revoked, revoked_at) = next((tps, t) for k, tps, t in events if k == "a-revoked")
    (given, given_at) = next((tps, t) for k, tps, t in events if k == "b-assigned" and tps)
    assert given and given <= revoked and revoked_at < given_at
    assert second == []  # everything the first owner handed out was committed on revoke
    assert pending(conn, "orders", 4) == 0


def test_heartbeats_go_on_while_the_application_awaits(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 10)

    async def main(aconn: AsyncConnection) -> tuple[int, set[TopicPartition], int]:
        async with consumer(aconn, config=ConsumerConfig(auto_commit=False)) as c:
            got = await drain(c, 10)
            owned = await c.assignment()
            # Three sessions (FAST: 1 s) of awaiting something else: the heartbeat task
            # keeps the member, its partitions and its fences.
            await asyncio.sleep(3 * FAST.session_timeout_ms / 1000)
            await c.commit(got)
            assert await c.assignment() == owned
            return len(got), owned, c.refused_acks

    n, owned, refused = run(client_config, main)
    assert n == 10 and len(owned) == 2 and refused == 0
    assert pending(conn, "orders", 2) == 0


def test_close_commits_and_leaves_even_when_cancelled(
    conn: Connection, client_config: ClientConfig
) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 20)

    async def main(aconn: AsyncConnection) -> int:
        c = await consumer(aconn).start()
        got = await drain(c, 20)
        closing = asyncio.ensure_future(c.close())
        await asyncio.sleep(0)  # close is under way
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(ClosedError):
            await c.poll()
        return len(got)

    assert run(client_config, main) == 20
    assert pending(conn, "orders", 2) == 0  # auto-commit: the last poll committed on close
    assert GroupAdmin(conn).describe("g").members == ()  # and the member left
