"""``consume.lua``'s ``read`` op on a real server, called as the consumer's script path calls
it: a read that ends a partition's recovery returns what was pending and leaves the new
entries to the next read (the consumer's native XREADGROUP), so a backlog's first read does
not go through Lua entry by entry."""

from __future__ import annotations

import time

import pytest

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.keys import Layouts
from partitions._base.replies import FetchResult, fetch_result
from partitions._base.types import TopicPartition
from partitions._client.connection import Connection
from partitions._client.nodes import execute_on_key
from partitions._consumer import plans
from partitions._consumer.assignment import STREAM_CONSUMER, Assignment, PartitionState
from partitions._consumer.calls import hand_call, read_call, reclaim_call

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _read(conn: Connection, a: Assignment, tp: TopicPartition, count: int) -> FetchResult:
    st = a.parts[tp]
    call = read_call(st, count=count, max_deliveries=5, reclaim_ms=0, start="0", acks=[])
    reply = execute_on_key(conn, st.stream, *call.command())
    res = fetch_result(tp.topic, tp.partition, reply)
    st.cursor = res.cursor
    return res


def _owned(
    conn: Connection, topic: str, n: int
) -> tuple[Assignment, TopicPartition, PartitionState]:
    """A one-partition ``topic`` with ``n`` entries, owned by member m1 of group <topic>-g
    (its fence set to m1's grant, token 7)."""
    meta = TopicAdmin(conn).create(TopicSpec(topic, 1))
    tp = TopicPartition(topic, 0)
    a = Assignment(conn.keys, f"{topic}-g", "m1", Layouts([meta.layout]))
    st = a.assign(tp, 7)
    execute_on_key(conn, st.stream, "HSET", st.fence_key, f"{topic}-g", st.fence)
    for i in range(n):
        execute_on_key(conn, st.stream, "XADD", st.stream, "*", "value", f"v{i}")
    return a, tp, st


def test_the_read_that_ends_recovery_leaves_new_entries_to_the_next_read(
    conn: Connection,
) -> None:
    a, tp, st = _owned(conn, "creads", 5)

    # A new owner starts by recovering what is pending: nothing (the group is new).
    first = _read(conn, a, tp, 100)
    assert first.status == 1 and first.records == []
    assert (first.cursor, first.tail) == ("", plans.RECOVERED)
    # The next read (cursor '') reads the backlog.
    nxt = _read(conn, a, tp, 100)
    assert [r.value for r in nxt.records] == [f"v{i}".encode() for i in range(5)]

    # A takeover with entries pending: they come back, and the new ones wait for the next.
    execute_on_key(conn, st.stream, "XADD", st.stream, "*", "value", "v5")
    st.cursor = "-"
    again = _read(conn, a, tp, 100)
    assert [r.value for r in again.records] == [f"v{i}".encode() for i in range(5)]
    assert (again.cursor, again.tail) == ("", plans.RECOVERED)
    last = _read(conn, a, tp, 100)
    assert [r.value for r in last.records] == [b"v5"]


def test_a_reclaim_pass_returns_only_stuck_entries_and_reads_nothing_new(
    conn: Connection,
) -> None:
    a, tp, st = _owned(conn, "creclaim", 3)
    _read(conn, a, tp, 100)  # recovery: nothing pending, the group is created
    fetched = _read(conn, a, tp, 100)  # the three are pending now, never acked
    assert len(fetched.records) == 3
    execute_on_key(conn, st.stream, "XADD", st.stream, "*", "value", "new")

    def reclaim(idle_ms: int) -> FetchResult:
        call = reclaim_call(st, count=100, max_deliveries=5, reclaim_ms=idle_ms)
        reply = execute_on_key(conn, st.stream, *call.command())
        return fetch_result(tp.topic, tp.partition, reply)

    assert reclaim(600_000).records == []  # not idle long enough
    time.sleep(0.05)
    res = reclaim(10)
    assert res.status == 1 and res.reclaimed == 3
    # The stuck ones, in id order, each to be recorded before its hand-out; not the new one.
    assert [r.value for r in res.records] == [b"v0", b"v1", b"v2"]
    assert all(r._claim and r.deliveries == 1 for r in res.records)
    assert _read(conn, a, tp, 100).records[0].value == b"new"  # still new for the group

    # A later owner holds the fence: refused, nothing returned.
    execute_on_key(conn, st.stream, "HSET", st.fence_key, "creclaim-g", "m2 8")
    assert (reclaim(10).status, reclaim(10).detail) == (0, "m2 8")


def test_entries_pending_under_an_older_consumer_name_are_recovered_and_reclaimed(
    conn: Connection,
) -> None:
    # Versions before session 7 read as the stream consumer "partstream"; the name is shorter
    # now (it rides in every XCLAIM the server propagates). A group they left entries pending
    # in still has those entries recovered by a new owner, and claimed by the reclaim pass.
    assert STREAM_CONSUMER != "partstream"
    a, tp, st = _owned(conn, "coldname", 4)
    group = "coldname-g"
    execute_on_key(conn, st.stream, "XGROUP", "CREATE", st.stream, group, "0")
    old = execute_on_key(conn, st.stream, "XREADGROUP", "GROUP", group, "partstream", "COUNT",
                         3, "STREAMS", st.stream, ">")  # fmt: skip
    assert old and len(old[0][1] if isinstance(old, list) else next(iter(old.values()))) == 3
    st.cursor = "-"  # a new owner: recovery first
    got = _read(conn, a, tp, 100)
    assert [r.value for r in got.records] == [b"v0", b"v1", b"v2"]
    assert _read(conn, a, tp, 100).records[0].value == b"v3"  # then the new one
    # The reclaim pass finds the stuck ones under either name.
    time.sleep(0.05)
    call = reclaim_call(st, count=100, max_deliveries=5, reclaim_ms=10)
    res = fetch_result(tp.topic, tp.partition, execute_on_key(conn, st.stream, *call.command()))
    assert [r.value for r in res.records] == [b"v0", b"v1", b"v2", b"v3"]
    # Claimed to the new name only when handed out ('hand'): the group's one pending list
    # holds all four meanwhile, whoever's name they sit under.
    summary = execute_on_key(conn, st.stream, "XPENDING", st.stream, group)
    assert int(summary[0] if isinstance(summary, list) else summary["pending"]) == 4


def test_a_read_takes_back_only_the_recording_a_lost_hand_call_left(conn: Connection) -> None:
    # A hand call recorded three hand-outs and its reply was lost: none was made. The next
    # read takes back each recording, but only where the entry is still pending at exactly
    # the count that call left, with its payload: a count something else set stays, and an
    # entry whose payload went is left to recovery, which dead-letters it as trimmed (an
    # XCLAIM would drop it from the pending list silently).
    a, tp, st = _owned(conn, "cunhand", 3)
    group = "cunhand-g"
    _read(conn, a, tp, 100)  # recovery of nothing (the group is created)
    got = _read(conn, a, tp, 100).records
    assert [r.value for r in got] == [b"v0", b"v1", b"v2"]

    def count(rid: str) -> int:
        return int(conn.client.xpending_range(st.stream, group, rid, rid, 1)[0]["times_delivered"])

    assert [count(r.id) for r in got] == [1, 1, 1]
    hand = hand_call(st, [], got)  # what the lost call ran
    execute_on_key(conn, st.stream, *hand.command())
    assert [count(r.id) for r in got] == [2, 2, 2]
    v0, v1, v2 = (r.id for r in got)
    conn.client.xclaim(st.stream, group, STREAM_CONSUMER, 0, [v1], retrycount=5, justid=True)
    execute_on_key(conn, st.stream, "XDEL", st.stream, v2)

    st.cursor = "-"  # the consumer recovers from the last record handed out (none)
    call = read_call(st, count=100, max_deliveries=5, reclaim_ms=0, start="0", acks=[],
                     unhand=hand.handed)  # fmt: skip
    res = fetch_result(tp.topic, tp.partition, execute_on_key(conn, st.stream, *call.command()))
    assert res.status == 1
    assert count(v0) == 1  # taken back
    assert count(v1) == 5  # not the count the lost call left: untouched
    assert [r.value for r in res.records] == [b"v0", b"v1"] and res.dead == 1
    dead = [f for _, f in conn.client.xrange(st.dlq_key) if b"dlq.reason" in f]
    assert [(d[b"dlq.id"], d[b"dlq.reason"]) for d in dead] == [(v2.encode(), b"trimmed")]
