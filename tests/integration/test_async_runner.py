"""AsyncMemberRunner against a real server: the essentials of test_coordinator.py's runner
test on the asyncio shell (revoked before anyone is assigned, balance, leave on close), plus
what is particular to a task: heartbeats go on while the application awaits, a member that
stops polling leaves, cancellation still leaves the group, a sync and an async runner share
one group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from coordinator.aio import AsyncMember, AsyncMemberRunner
from coordinator.member import Member
from coordinator.runner import MemberRunner
from partitions import AsyncConnection
from partitions._admin.groups import GroupAdmin
from partitions._base.errors import PollIntervalExceededError
from partitions._base.fence import claim_fence, read_fence
from partitions._base.settings import GroupSettings
from partitions._base.types import Grant, TopicPartition
from partitions._client.connection import Connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]

FAST = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200)
TOPICS = {"orders": 12}
Events = list[tuple[str, str, frozenset[TopicPartition]]]


class Listener:
    """Async callbacks that record what they were told, in order."""

    def __init__(self, name: str, events: Events) -> None:
        self.name, self.events = name, events

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await asyncio.sleep(0)  # a real listener awaits its commit here
        self.events.append((self.name, "revoked", frozenset(revoked)))

    async def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        self.events.append((self.name, "assigned", frozenset(assigned)))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.append((self.name, "lost", frozenset(lost)))


def amember(aconn: AsyncConnection, mid: str) -> AsyncMember:
    return AsyncMember(aconn.client, aconn.keys, "g", TOPICS, member_id=mid, settings=FAST)


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_revocations_come_before_assignments(
    aconn: AsyncConnection, conn: Connection
) -> None:
    events: Events = []
    ra = await AsyncMemberRunner(amember(aconn, "a"), Listener("a", events)).start()
    rb = await AsyncMemberRunner(amember(aconn, "b"), Listener("b", events)).start()
    try:
        await until(lambda: len(ra.owned()) == len(rb.owned()) == 6)
        assert set(ra.owned()).isdisjoint(rb.owned())
        assert ra.session_alive() and rb.session_alive()
        revoked_at = events.index(("a", "revoked", frozenset(rb.owned())))
        assigned_at = events.index(("b", "assigned", frozenset(rb.owned())))
        assert revoked_at < assigned_at
        assert not any(kind == "lost" for _, kind, _ in events)
    finally:
        await rb.close()
        await until(lambda: len(ra.owned()) == 12)
        await ra.close()
    assert GroupAdmin(conn).describe("g").state == "empty"
    assert events[-1] == ("a", "revoked", frozenset(TopicPartition("orders", p) for p in range(12)))


async def test_heartbeats_go_on_while_the_application_awaits(aconn: AsyncConnection) -> None:
    async with AsyncMemberRunner(amember(aconn, "a")) as runner:
        await asyncio.sleep(2.5)  # over two sessions: only heartbeats keep the member in
        assert runner.session_alive() and len(runner.owned()) == 12
        assert runner.last_error is None


async def test_a_sync_and_an_async_runner_share_the_group(
    aconn: AsyncConnection, conn: Connection
) -> None:
    events: Events = []
    ra = await AsyncMemberRunner(amember(aconn, "a"), Listener("a", events)).start()
    sync = MemberRunner(Member(conn.client, conn.keys, "g", TOPICS, member_id="b", settings=FAST))
    await asyncio.to_thread(sync.start)
    try:
        await until(lambda: len(ra.owned()) == len(sync.owned()) == 6)
        assert set(ra.owned()).isdisjoint(sync.owned())
    finally:
        await asyncio.to_thread(sync.close)
        await ra.close()


async def test_a_member_that_stops_polling_leaves_and_rejoins_on_the_next_poll(
    aconn: AsyncConnection, conn: Connection
) -> None:
    events: Events = []
    runner = AsyncMemberRunner(amember(aconn, "a"), Listener("a", events), max_poll_interval_ms=600)
    await runner.start()
    try:
        owned = runner.owned()
        tp, grant = next(iter(owned.items()))
        assert claim_fence(
            conn.client,
            conn.keys,
            "g",
            runner.member.layouts.of(tp.topic),
            tp.partition,
            "a",
            grant.token,
        )
        await until(lambda: ("a", "lost", frozenset(owned)) in events, timeout=5)
        assert not runner.owned() and not runner.member.joined
        assert (
            read_fence(
                conn.client, conn.keys, "g", runner.member.layouts.of(tp.topic), tp.partition
            )
            is None
        )
        poll_once = runner.polling()
        with pytest.raises(PollIntervalExceededError, match="max_poll_interval_ms=600"):
            poll_once.__enter__()
        with runner.polling():  # the next request proceeds; the member rejoins
            await until(lambda: len(runner.owned()) == 12)
    finally:
        await runner.close()


async def test_cancelling_the_closer_still_leaves_the_group(
    aconn: AsyncConnection, conn: Connection
) -> None:
    events: Events = []
    runner = await AsyncMemberRunner(amember(aconn, "a"), Listener("a", events)).start()
    closer = asyncio.create_task(runner.close())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await until(lambda: GroupAdmin(conn).describe("g").state == "empty")
    # The server has the leave before its reply reaches the member (the close goes on in
    # the background): the member knows it left a moment later, not at once.
    await until(lambda: not runner.member.joined, timeout=5)
    assert ("a", "revoked", frozenset(TopicPartition("orders", p) for p in range(12))) in events
