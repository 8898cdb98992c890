"""Consumer integration tests: fenced reads and acks, takeover order, reclaim, dead letters,
safe retention, seek, lag with a NULL server lag, lost state and rebalance callbacks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from partitions._admin.deadletter import DeadLetters
from partitions._admin.groups import execute_group_seek, group_lag, group_offsets, plan_group_seek
from partitions._base.errors import NotOwnerError, StateLostError
from partitions._base.fence import claim_fence
from partitions._base.records import Record
from partitions._base.replies import text
from partitions._base.settings import GroupSettings
from partitions._base.types import Grant, TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._telemetry.scrape import scrape
from tests import helpers
from tests.helpers import drain, layout, produce, topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = helpers.FAST.with_changes(max_deliveries=3, reclaim_idle_ms=60_000)


def idkey(i: str) -> tuple[int, int]:
    ms, seq = i.split("-")
    return int(ms), int(seq)


def consumer(conn: Connection, **kw: Any) -> Consumer:
    kw.setdefault("group_settings", FAST)
    return Consumer(kw.pop("group", "g"), kw.pop("topics", "orders"), conn=conn, **kw)


def pending(conn: Connection, name: str, n: int, group: str = "g") -> int:
    return sum(
        conn.client.xpending(conn.keys.stream(layout(conn, name), p), group)["pending"]
        for p in range(n)
    )


def test_reads_everything_in_order_and_auto_commits(conn: Connection) -> None:
    topic(conn)
    produce(conn, "orders", 2000)
    with consumer(conn) as c:
        got = drain(c, 2000)
        c.poll(timeout=0.05)  # acks the last batch
        assert pending(conn, "orders", 4) == 0
    assert len(got) == 2000 and len(set(got)) == 2000
    by_key: dict[bytes | None, list[int]] = {}
    for r in got:
        by_key.setdefault(r.key, []).append(int(r.value[1:]))  # type: ignore[index]
    assert all(v == sorted(v) for v in by_key.values())


def test_idle_consumer_wakes_within_milliseconds(conn: Connection) -> None:
    topic(conn)
    with consumer(conn) as c:
        wait_for(lambda: len(c.assignment()) == 4 and not c.poll(timeout=0.05) and c.assignment())
        result: list[float] = []

        def later() -> None:
            time.sleep(0.3)
            result.append(time.monotonic())
            produce(conn, "orders", 1)

        threading.Thread(target=later).start()
        got = c.poll(timeout=3)
        woke = time.monotonic()
    assert len(got) == 1
    assert woke - result[0] < 0.1


def test_superseded_owner_reads_nothing_and_its_acks_are_refused(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 10)
    c = consumer(conn, config=ConsumerConfig(fetch_count=5))
    try:
        first = drain(c, 5)
        assert len(first) == 5
        # A newer grant takes the fence (what a new owner does after a rebalance).
        assert claim_fence(
            conn.client, conn.keys, "g", layout(conn, "orders"), 0, "intruder", 2**52
        )
        assert c.poll(timeout=0.3) == []  # nothing more read; the ack rode along, refused
        assert c.refused_acks == 5
        assert c.assignment() == set()
        assert pending(conn, "orders", 1) == 5  # the zombie marked nothing done
    finally:
        c.close()


def test_manual_commit_acks_every_record_handed_out_since_the_last_one(conn: Connection) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 30)
    with consumer(conn, config=ConsumerConfig(auto_commit=False)) as c:
        got: list[Record] = []
        while len(got) < 30:
            got += c.poll(max_records=7, timeout=2)  # several polls before one commit
        assert pending(conn, "orders", 2) == 30
        c.commit()
        assert pending(conn, "orders", 2) == 0


def test_commit_after_losing_the_partition_raises(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 3)
    c = consumer(conn, config=ConsumerConfig(auto_commit=False))
    try:
        got = drain(c, 3)
        assert claim_fence(
            conn.client, conn.keys, "g", layout(conn, "orders"), 0, "intruder", 2**52
        )
        with pytest.raises(NotOwnerError):
            c.commit(got)
        assert pending(conn, "orders", 1) == 3
    finally:
        c.close()


def test_new_owner_first_redelivers_unacked_entries_in_id_order(conn: Connection) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 100)
    a = consumer(conn, config=ConsumerConfig(auto_commit=False, fetch_count=20))
    first = drain(a, 40)
    a.commit(first[:10])
    unacked = sorted(first[10:], key=lambda r: (r.partition, idkey(r.id)))
    a.close()  # manual commit: the other 30 stay pending
    produce(conn, "orders", 10, start=100)
    b = consumer(conn)
    try:
        got = drain(b, 100)
    finally:
        b.close()
    assert len(got) == 100
    assert set(got) >= set(unacked)
    assert not set(got) & set(first[:10])
    for p in (0, 1):
        ids = [r.id for r in got if r.partition == p]
        assert ids == sorted(ids, key=idkey)
        redelivered = [r for r in unacked if r.partition == p]
        assert [r.id for r in got if r.partition == p][: len(redelivered)] == [
            r.id for r in redelivered
        ]


def test_stuck_entry_is_reclaimed_after_reclaim_idle(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 3)
    settings = FAST.with_changes(reclaim_idle_ms=300)
    with consumer(conn, group_settings=settings) as c:
        for rec in c:
            stuck = rec
            break  # left the loop: not committed
        rest = drain(c, 2)
        assert stuck not in rest
        time.sleep(0.4)
        # Returns as soon as it comes; the time allows for CI's failover pass, whose kill -9
        # of a primary (promotion ~3.5 s) once landed here and outlasted a 3 s wait.
        again = drain(c, 1, timeout=15)
    assert again == [stuck]


def test_poison_record_goes_to_dlq_after_max_deliveries_and_partition_flows(
    conn: Connection,
) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 6)
    seen: list[str] = []
    with consumer(conn) as c:
        poison = None
        end = time.monotonic() + 10
        while len({s for s in seen}) < 6 and time.monotonic() < end:
            for rec in c.poll(max_records=1, timeout=0.2):
                seen.append(rec.value.decode())  # type: ignore[union-attr]
                if rec.value == b"v2":
                    poison = rec
                    c.nack(rec)
        assert c.dead_lettered == 1
    assert seen.count("v2") == FAST.max_deliveries
    assert seen == ["v0", "v1", "v2", "v2", "v2", "v3", "v4", "v5"]
    letters = DeadLetters(conn).list("orders")
    assert len(letters) == 1
    d = letters[0]
    assert poison is not None and d.original_id == poison.id
    assert (d.group, d.partition, d.reason, d.deliveries) == ("g", 0, "max_deliveries", 3)
    assert d.record.key == b"k2" and d.record.value == b"v2"
    assert pending(conn, "orders", 1) == 0


def test_user_dead_letter_and_replay(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 2)
    with consumer(conn) as c:
        got = drain(c, 2)
        c.dead_letter(got[0], reason="bad-schema")
        c.poll(timeout=0.05)
    [d] = DeadLetters(conn).list("orders")
    assert d.reason == "bad-schema" and d.record.value == b"v0"
    result = DeadLetters(conn).replay("orders")
    assert (result.replayed, result.skipped) == (1, 0)
    assert DeadLetters(conn).list("orders") == []
    with consumer(conn) as c:
        again = drain(c, 1)
    assert [r.value for r in again] == [b"v0"]


def test_trimmed_pending_entries_land_in_dlq_with_reason_trimmed(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 10)
    a = consumer(conn, config=ConsumerConfig(auto_commit=False))
    got = drain(a, 10)
    a.close()  # all 10 pending
    conn.client.xtrim(
        conn.keys.stream(layout(conn, "orders"), 0), minid=got[6].id, approximate=False
    )  # trims 6 pending ones
    produce(conn, "orders", 2, start=10)
    with consumer(conn) as b:
        after = drain(b, 6)
    assert [r.value for r in after] == [b"v6", b"v7", b"v8", b"v9", b"v10", b"v11"]
    letters = DeadLetters(conn).list("orders")
    assert sorted(d.original_id for d in letters) == sorted(r.id for r in got[:6])
    assert {d.reason for d in letters} == {"trimmed"}


def test_safe_retention_never_trims_unacked_entries(conn: Connection) -> None:
    topic(conn, "safe", n=1, max_length=100, safe_retention=True)
    topic(conn, "unsafe", n=1, max_length=100)
    for name in ("safe", "unsafe"):
        produce(conn, name, 50)
        c = consumer(conn, topics=name, group="g", config=ConsumerConfig(auto_commit=False))
        first = drain(c, 10)
        c.close()  # 10 pending (in fact 50 delivered: fetch_count 500)
        produce(conn, name, 1000, start=50)
        first_left = conn.client.xrange(conn.keys.stream(layout(conn, name), 0), count=1)[0][
            0
        ].decode()
        if name == "safe":
            assert first_left == first[0].id
        else:
            assert first_left != first[0].id  # trimmed below unacked entries
    # the unsafe topic's trimmed entries show up as dead letters once reclaimed
    with consumer(conn, topics="unsafe") as c:
        drain(c, 100, timeout=3)
    assert {d.reason for d in DeadLetters(conn).list("unsafe")} == {"trimmed"}


def test_safe_retention_trims_what_every_group_acked(conn: Connection) -> None:
    # Producers trim a safe topic only to the "~cut" its consumers compute on their
    # reclaim-time reads (every reclaim_idle_ms / 4 here): below the oldest unacked entry.
    topic(conn, "safe", n=1, max_length=100, safe_retention=True)
    quick = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200,
                          reclaim_idle_ms=400)  # fmt: skip
    stream = conn.keys.stream(layout(conn, "safe"), 0)
    with consumer(conn, topics="safe", group_settings=quick,
                  config=ConsumerConfig(auto_commit=False)) as c:  # fmt: skip
        wait_for(lambda: c.poll(timeout=0.1) == [] and c.assignment())  # the group reads it
        produce(conn, "safe", 300)
        got = drain(c, 300)
        assert len(got) == 300  # nothing trimmed while the group had not read it
        c.commit(got[:-1])  # all but the last one acked
        wait_for(lambda: c.poll(timeout=0.2) == [] and conn.client.hget(
            conn.keys.stream_groups(layout(conn, "safe"), 0), "~cut") is not None)  # fmt: skip
        produce(conn, "safe", 150, start=300)
        left = conn.client.xrange(stream, count=1)[0][0].decode()
        assert idkey(left) <= idkey(got[-1].id)  # the unacked entry is kept ...
        assert conn.client.xlen(stream) < 450  # ... but what was acked below it went
        c.commit(got[-1:])


def test_seek_by_id_and_time(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 5)
    time.sleep(0.01)
    t = int(conn.client.time()[0]) * 1000 + int(conn.client.time()[1]) // 1000
    time.sleep(0.01)
    produce(conn, "orders", 5, start=5)
    with consumer(conn) as c:
        got = drain(c, 10)
        c.seek("orders", 0, got[2].id)
        assert [r.value for r in drain(c, 7)] == [f"v{i}".encode() for i in range(3, 10)]
        c.seek("orders", 0, t)
        assert [r.value for r in drain(c, 5)] == [f"v{i}".encode() for i in range(5, 10)]
        c.seek("orders", 0, "earliest")
        assert len(drain(c, 10)) == 10
        c.seek("orders", 0, "latest")
        assert c.poll(timeout=0.2) == []
        assert c.position()[TopicPartition("orders", 0)] == got[-1].id
        with pytest.raises(NotOwnerError):
            c.seek("orders", 7, "earliest")


def test_group_seek_plan_changes_nothing_until_executed(conn: Connection) -> None:
    topic(conn, n=2)
    produce(conn, "orders", 20)
    with consumer(conn) as c:
        drain(c, 20)
        c.poll(timeout=0.05)
    before = group_offsets(conn, "g")
    plan = plan_group_seek(conn, "g", "earliest")
    assert [s.new for s in plan.steps] == ["0", "0"]
    assert group_offsets(conn, "g") == before
    execute_group_seek(conn, plan)
    lag = group_lag(conn, "g")
    assert lag.total_lag == 20
    with consumer(conn) as c:
        assert len(drain(c, 20)) == 20


def test_lag_counts_undelivered_and_pending_when_server_lag_is_null(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 30)
    c = consumer(conn, config=ConsumerConfig(auto_commit=False, fetch_count=10))
    try:
        got = drain(c, 10)
        c.commit(got[:4])
        stream = conn.keys.stream(layout(conn, "orders"), 0)
        conn.client.xdel(stream, got[20 - 10].id if len(got) > 10 else "0-1")
        # SETID without ENTRIESREAD: the server no longer knows the lag
        conn.client.execute_command("XGROUP", "SETID", stream, "g", got[-1].id)
        info = conn.client.xinfo_groups(stream)[0]
        assert info["lag"] is None
        [off] = group_offsets(conn, "g")
        assert (off.pending, off.lag, off.exact) == (6, 20 + 6, True)
    finally:
        c.close()


def test_lag_is_exact_after_deleted_entries_the_group_read_past(conn: Connection) -> None:
    """Entries deleted before the group read past them (the producer deletes the duplicates
    it undoes after a retry): Redis 7.0's counter keeps counting them as lag for good
    (redis/redis#13337). The group's lag must still reach 0 once it has read and acked
    everything, and count what is really behind after that, in every read path."""
    topic(conn, n=1)
    stream = conn.keys.stream(layout(conn, "orders"), 0)
    produce(conn, "orders", 5)
    with Consumer("g", "orders", conn=conn) as c:  # the library's defaults throughout
        drain(c, 5)
        c.commit()
        produce(conn, "orders", 4)
        doomed = [i for i, _ in conn.client.xrange(stream)][-4:]
        assert conn.client.xdel(stream, *doomed) == 4
        produce(conn, "orders", 5)
        drain(c, 5)
        c.commit()
        server_lag = conn.client.xinfo_groups(stream)[0]["lag"]
        assert server_lag in (0, 4)  # 4: the server's counter is stale (Redis 7.0)
        assert [(o.lag, o.exact) for o in group_offsets(conn, "g")] == [(0, True)]
        assert group_lag(conn, "g").total_lag == 0
        [state] = scrape(conn).groups
        assert [(o.lag, o.oldest_unacked_id) for o in state.offsets] == [(0, None)]
        produce(conn, "orders", 3)  # now really 3 behind (the stale counter says 7)
        head = [i for i, _ in conn.client.xrange(stream)][-3]
        [off] = group_offsets(conn, "g")
        assert (off.lag, off.exact, off.oldest_unacked_id) == (3, True, text(head))
        [state] = scrape(conn).groups
        assert [(o.lag, o.oldest_unacked_id) for o in state.offsets] == [(3, text(head))]
        assert len(drain(c, 3)) == 3


def test_deleted_stream_or_group_under_a_live_consumer_is_state_lost(conn: Connection) -> None:
    topic(conn, n=1)
    produce(conn, "orders", 3)
    with consumer(conn) as c:
        drain(c, 3)
        conn.client.delete(conn.keys.stream(layout(conn, "orders"), 0))
        with pytest.raises(StateLostError):
            c.poll(timeout=0.3)
        assert not conn.client.exists(conn.keys.stream(layout(conn, "orders"), 0))  # not re-created
    produce(conn, "orders", 3)
    with consumer(conn, group="g2") as c:
        drain(c, 3)
        conn.client.xgroup_destroy(conn.keys.stream(layout(conn, "orders"), 0), "g2")
        with pytest.raises(StateLostError):
            c.poll(timeout=0.3)


class Log:
    def __init__(self, name: str, events: list[tuple[str, str, float]], c: list[Consumer]):
        self.name, self.events, self.c = name, events, c

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.c[0].commit()  # the user may still commit what it processed
        self.events.append((self.name, "revoked", time.monotonic()))

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        self.events.append((self.name, "assigned", time.monotonic()))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.append((self.name, "lost", time.monotonic()))


def test_rebalance_revokes_before_assigning_and_commits_in_between(conn: Connection) -> None:
    topic(conn, n=4)
    produce(conn, "orders", 400)
    events: list[tuple[str, str, float]] = []
    ca: list[Consumer] = []
    a = consumer(conn, listener=Log("a", events, ca), config=ConsumerConfig(auto_commit=False))
    ca.append(a)
    got_a = drain(a, 400)
    assert len(got_a) == 400
    stop = threading.Event()
    cb: list[Consumer] = []
    got_b: list[Record] = []

    def run_b() -> None:
        b = consumer(conn, listener=Log("b", events, cb))
        cb.append(b)
        try:
            while not stop.is_set():
                got_b.extend(b.poll(timeout=0.1))
        finally:
            b.close()

    t = threading.Thread(target=run_b)
    t.start()
    try:
        # callbacks run inside poll(), on the consumer's thread
        wait_for(lambda: a.poll(timeout=0.05) == [] and ("a", "revoked") in [e[:2] for e in events])
        wait_for(lambda: ("b", "assigned") in [e[:2] for e in events])
        a.poll(timeout=0.3)
        assert len(a.assignment()) == 2
    finally:
        stop.set()
        t.join()
        a.close()
    revoked_at = next(ts for n, e, ts in events if (n, e) == ("a", "revoked"))
    assigned_b = next(ts for n, e, ts in events if (n, e) == ("b", "assigned"))
    assert revoked_at < assigned_b
    assert got_b == []  # a committed everything it had in on_partitions_revoked
