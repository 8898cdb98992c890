"""A hand-out whose reply was lost is not a delivery.

A recovered record's hand-out is recorded on the server ('hand': XCLAIM ... RETRYCOUNT) right
before the consumer hands it out, so a record that crashes its consumer is counted each time
and reaches the dead-letter stream after ``max_deliveries``. If that call's reply is lost (an
asyncio cancellation, a dropped connection), the consumer hands nothing out, and the record,
read again, must not carry the hand-out that never happened: cut often enough it would be
dead-lettered as poison without the application ever seeing it (seen in CI at 6190ed2: the
asyncio cancellation test's 300 records came out 299, the missing one pending nowhere).

The faults are injected at the wire: the real call runs on the real server, then its reply is
dropped, as a cut connection or a cancellation would drop it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.exceptions as rex

from partitions import AsyncConsumer, ClientConfig, Consumer, connect_async
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._client import wire
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from tests import helpers
from tests.helpers import layout, produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# The library's defaults (a group this test creates gets them): max_deliveries 5.
SETTINGS = GroupSettings()
CUTS = 2 * SETTINGS.max_deliveries  # every one counted would dead-letter the record


def carries_hand(payload: list[bytes]) -> bool:
    return any(b"\r\nhand\r\n" in chunk for chunk in payload)


def left_pending(conn: Connection, n: int, owners: int) -> None:
    """``n`` records of a one-partition topic, handed out to ``owners`` consumers in turn,
    each gone without committing: pending for group g. The first hand-out of a fetched
    entry goes unrecorded (the hot path); a recovered one's is recorded, so after two owners
    each record is a suspect (handed out before and never acked), handed out alone."""
    topic(conn, n=1)
    produce(conn, "orders", n)
    for _ in range(owners):
        first = Consumer("g", "orders", conn=conn, config=ConsumerConfig(auto_commit=False),
                         group_settings=SETTINGS)  # fmt: skip
        with first:
            assert len(helpers.drain(first, n)) == n
    assert pending(conn) == n


def pending(conn: Connection) -> int:
    stream = conn.keys.stream(layout(conn, "orders"), 0)
    return int(conn.client.xpending(stream, "g")["pending"])


def dead_letters(conn: Connection) -> list[dict[bytes, bytes]]:
    return [f for _, f in conn.client.xrange(conn.keys.dlq(layout(conn, "orders"), 0))
            if b"dlq.reason" in f]  # fmt: skip


def check(conn: Connection, got: list[Record], n: int, owners: int, cuts: int) -> None:
    assert cuts == CUTS, f"only {cuts} hand-outs were cut: the test proved nothing"
    assert dead_letters(conn) == [], "a record was dead-lettered for hand-outs never made"
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(n))
    # The recorded hand-outs (all but the first owner's) and this one: the cut ones count
    # for nothing (each that ran would have added one).
    assert [r.deliveries for r in got] == [owners] * n, [(r.value, r.deliveries) for r in got]
    assert pending(conn) == 0


@pytest.mark.parametrize("owners", [1, 2])
def test_a_threaded_consumer_does_not_count_hand_outs_whose_reply_was_lost(
    conn: Connection, monkeypatch: pytest.MonkeyPatch, owners: int
) -> None:
    left_pending(conn, 3, owners)
    real: Callable[..., list[Any]] = wire.exchange_on
    cuts = 0

    def cut_after_the_write(c: Any, payload: list[bytes], expect: int) -> list[Any]:
        nonlocal cuts
        replies = real(c, payload, expect)  # it ran on the server
        if cuts < CUTS and carries_hand(payload):
            cuts += 1
            raise rex.ConnectionError("injected: the reply was lost")
        return replies

    monkeypatch.setattr(wire, "exchange_on", cut_after_the_write)
    with Consumer("g", "orders", conn=conn, group_settings=SETTINGS) as c:
        got = helpers.drain(c, 3, timeout=20)
        c.commit()
    check(conn, got, 3, owners, cuts)


@pytest.mark.parametrize("owners", [1, 2])
def test_an_asyncio_consumer_does_not_count_hand_outs_that_were_cancelled(
    conn: Connection,
    client_config: ClientConfig,
    monkeypatch: pytest.MonkeyPatch,
    owners: int,
) -> None:
    left_pending(conn, 3, owners)
    real: Callable[..., Any] = wire.aexchange_on
    cuts = 0

    async def cancelled_after_the_write(c: Any, payload: list[bytes], expect: int) -> Any:
        nonlocal cuts
        replies = await real(c, payload, expect)  # it ran on the server
        if cuts < CUTS and carries_hand(payload):
            cuts += 1
            raise asyncio.CancelledError  # as a cancel landing on the read of its reply
        return replies

    monkeypatch.setattr(wire, "aexchange_on", cancelled_after_the_write)

    async def main() -> list[Record]:
        got: list[Record] = []
        aconn = await connect_async(client_config)
        async with aconn, AsyncConsumer(aconn, "g", "orders", group_settings=SETTINGS) as c:
            for _ in range(50):
                if len(got) == 3:
                    break
                try:
                    got += await c.poll(timeout=0.2)
                except asyncio.CancelledError:
                    continue  # the poll was cut off: nothing it fetched was handed out
            await c.commit()
        return got

    got = asyncio.run(main())
    check(conn, got, 3, owners, cuts)


def test_a_consumer_closed_right_after_a_lost_hand_out_takes_it_back(
    conn: Connection, client_config: ClientConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No read follows the cut: the task is cancelled and the consumer closed (the common
    # shutdown). The take-back rides on the close's commit, while the fence is still held,
    # or the next owner would find a hand-out counted that was never made.
    left_pending(conn, 3, owners=2)
    stream = conn.keys.stream(layout(conn, "orders"), 0)

    def counts() -> list[int]:
        return [int(p["times_delivered"])
                for p in conn.client.xpending_range(stream, "g", "-", "+", 10)]  # fmt: skip

    before = counts()
    real: Callable[..., Any] = wire.aexchange_on
    cuts = 0

    async def cancelled_after_the_write(c: Any, payload: list[bytes], expect: int) -> Any:
        nonlocal cuts
        replies = await real(c, payload, expect)
        if cuts == 0 and carries_hand(payload):
            cuts += 1
            raise asyncio.CancelledError
        return replies

    monkeypatch.setattr(wire, "aexchange_on", cancelled_after_the_write)

    async def main() -> None:
        aconn = await connect_async(client_config)
        async with aconn, AsyncConsumer(aconn, "g", "orders", group_settings=SETTINGS) as c:
            with pytest.raises(asyncio.CancelledError):
                for _ in range(20):
                    await c.poll(timeout=0.2)  # until the first hand-out is cut

    asyncio.run(main())
    assert cuts == 1
    assert counts() == before == [2, 2, 2]  # the cut hand-out (it ran: 3) was taken back
