"""The fast path's round trips, driven without a server: a fake shell plays the data
connection (WATCH, HGET of the fences, MULTI ... EXEC) and counts what the flow sends.

What must hold: a transaction goes out only on the connection whose WATCH was checked (the
check riding behind the previous EXEC, or one of its own first); a steady fetch is one round
trip; an empty read with known tails does not fall back to the script path, one right after
a blocking wait does (its tails may be stale)."""

from __future__ import annotations

from typing import Any

import hiredis

from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._consumer import ops
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow
from partitions._consumer.ops import Events

TPS = [TopicPartition("t", 0), TopicPartition("t", 1)]


class _Runner:
    def session_alive(self, margin: float = 0.0) -> bool:
        return True

    def wake(self) -> None:
        pass


class FakeConnection:
    """A data connection's WATCH/MULTI semantics over fences and streams held here."""

    def __init__(self, a: Assignment) -> None:
        self.fences = {st.fence_key: st.fence_bytes for st in a.parts.values()}
        self.stream_of = {st.stream: st for st in a.parts.values()}
        self.entries: dict[str, list[tuple[bytes, list[bytes]]]] = {s: [] for s in self.stream_of}
        self.delivered: dict[str, int] = dict.fromkeys(self.stream_of, 0)
        self.watching: dict[str, bytes] = {}  # key -> value when watched
        self.dirty = False
        self.connected_same = True  # False: the shell's connection was replaced
        self.sent: list[list[tuple[Any, ...]]] = []  # each exchange's commands, unpacked
        self.txns_unguarded = 0  # transactions that ran with a fence not watched+checked
        self.scripts = 0
        self.ops: list[Any] = []  # every request the flow made

    def set_fence(self, key: str, value: bytes) -> None:
        self.fences[key] = value
        if key in self.watching:
            self.dirty = True

    def add(self, stream: str, n: int) -> None:
        got = self.entries[stream]
        for _ in range(n):
            got.append((f"{len(got) + 1}-0".encode(), [b"k", b"x", b"v", b"y"]))

    def answer(self, op: Any) -> Any:
        self.ops.append(op)
        if isinstance(op, ops.Wait):
            return None  # (a real one blocks until an entry comes; none is needed here)
        if isinstance(op, ops.Exchange):
            if op.same_connection and not self.connected_same:
                return None
            if not self.connected_same:  # the shell takes a new connection: no WATCH on it
                self.watching, self.dirty, self.connected_same = {}, False, True
            self.sent.append([unpacked(c) for c in op.commands])
            return self.run(op.commands)
        if isinstance(op, ops.Reset):
            self.watching, self.dirty = {}, False
            return None
        raise AssertionError(f"unexpected request {op!r}")

    def run(self, commands: list[Any]) -> list[Any]:
        out: list[Any] = []
        queued: list[tuple[Any, ...]] | None = None
        for cmd in map(unpacked, commands):
            name = cmd[0]
            if queued is not None and name != "EXEC":
                queued.append(cmd)
                out.append(b"QUEUED")
            elif name == "WATCH":
                for key in cmd[1:]:
                    self.watching.setdefault(key, self.fences.get(key, b""))
                out.append(b"OK")
            elif name == "UNWATCH":
                self.watching, self.dirty = {}, False
                out.append(b"OK")
            elif name == "HGET":
                out.append(self.fences.get(cmd[1]) if cmd[1] in self.fences else None)
            elif name == "MULTI":
                queued = []
                out.append(b"OK")
            elif name == "EXEC":
                assert queued is not None
                if self.dirty:
                    out.append(None)
                else:
                    out.append([self.execute(c) for c in queued])
                self.watching, self.dirty, queued = {}, False, None
            elif name == "XREAD":  # the blocking wait, answered at once: entries or none
                n = (len(cmd) - 6) // 2
                streams, tails = cmd[6 : 6 + n], cmd[6 + n :]
                woke = [
                    [s.encode(), [e for e in self.entries[s] if int(e[0][:-2]) > int(t[:-2])][:1]]
                    for s, t in zip(streams, tails, strict=True)
                ]
                out.append([w for w in woke if w[1]] or None)
            elif name == "FCALL":  # consume.lua's read: fenced, reads nothing new here
                self.scripts += 1
                n = int(cmd[2])
                keys, args = cmd[3 : 3 + n], cmd[3 + n :]
                holder = self.fences.get(keys[1], b"")
                if holder != str(args[2]).encode():
                    out.append([0, holder])
                else:
                    last = self.entries[keys[0]][-1][0] if self.entries[keys[0]] else b"0-0"
                    out.append([1, 0, [], "", last, 0, 0, []])
            else:
                raise AssertionError(f"unexpected command {cmd!r}")
        return out

    def execute(self, cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "XACK":
            return len(cmd) - 3
        assert cmd[0] == "XREADGROUP"
        streams = cmd[cmd.index("STREAMS") + 1 :]
        streams = streams[: len(streams) // 2]
        count = int(cmd[cmd.index("COUNT") + 1])
        reply = []
        for s in streams:
            st = self.stream_of[s]
            # What makes a transaction safe: its fence was watched, and held ours then.
            if self.watching.get(st.fence_key) != st.fence_bytes:
                self.txns_unguarded += 1
            start = self.delivered[s]
            got = self.entries[s][start : start + count]
            self.delivered[s] = start + len(got)
            if got:
                reply.append([s.encode(), got])
        return reply or None


def unpacked(command: Any) -> tuple[Any, ...]:
    """A command as its tuple of arguments (text), also where it went packed (PackCache)."""
    if not isinstance(command, bytes):
        return tuple(command)
    reader = hiredis.Reader()
    reader.feed(command)
    args = reader.gets()
    assert isinstance(args, list) and reader.gets() is False  # exactly one command
    return tuple(a.decode() for a in args)


def make() -> tuple[ConsumerFlow, FakeConnection]:
    a = Assignment(Keys("ps"), "g", "m1", Layouts([TopicLayout("t", 2)]))
    for tp in TPS:
        st = a.assign(tp, 1)
        st.cursor = ""  # recovered: the fast path may read it
        st.next_reclaim = 1e18  # no reclaim pass due (the script path's)
    f = ConsumerFlow(
        a, ConsumerConfig(), topics={}, runner=_Runner(), settings=GroupSettings,
        events=Events(lambda: None), listener=None, is_cluster=False,
    )  # fmt: skip
    return f, FakeConnection(a)


def fetch(f: ConsumerFlow, conn: FakeConnection, tails: bool = True) -> list[Any]:
    records, _ = ops.drive(f.fetch(5, 0, tails), conn.answer)
    return list(records)


def test_a_steady_fetch_is_one_round_trip_after_the_first() -> None:
    f, conn = make()
    s0, s1 = (st.stream for st in f.a.parts.values())
    conn.add(s0, 3)
    assert [r.id for r in fetch(f, conn)] == ["1-0", "2-0", "3-0"]
    assert len(conn.sent) == 2  # the first: a check of its own, then the transaction
    assert conn.sent[1][-1][0] == "HGET" and conn.sent[1][-5][:1] == ("WATCH",)
    conn.add(s0, 1)
    conn.add(s1, 2)
    got = fetch(f, conn)
    assert sorted(r.id for r in got) == ["1-0", "2-0", "4-0"] and len(conn.sent) == 3
    assert conn.txns_unguarded == 0


def test_a_reclaim_request_is_read_every_asks_every_s_and_served_by_the_script_path() -> None:
    f, conn, st0 = read_one()
    asks = [c for c in conn.sent[-1] if c[0] == "HGET" and c[2] == "g:reclaim"]
    assert len(asks) == 2  # the first trailing check reads the requests of both partitions
    conn.fences[st0.groups_key] = b"50"  # an admin asks: "reclaim stuck entries now"
    conn.add(st0.stream, 1)
    assert [r.id for r in fetch(f, conn)] == ["2-0"]  # within ASKS_EVERY_S: fast, not read
    assert not [c for c in conn.sent[-1] if c[0] == "HGET" and c[2] == "g:reclaim"]
    assert conn.scripts == 0
    f._asks_at = 0.0  # ASKS_EVERY_S passed: this fetch's trailing check reads them
    conn.add(st0.stream, 1)
    assert [r.id for r in fetch(f, conn)] == ["3-0"] and conn.scripts == 0
    assert len([c for c in conn.sent[-1] if c[0] == "HGET" and c[2] == "g:reclaim"]) == 2
    conn.add(st0.stream, 1)
    fetch(f, conn)  # partition 0 is not watched-and-clear: its check, then the script path
    assert conn.scripts > 0 and conn.txns_unguarded == 0


def read_one() -> tuple[ConsumerFlow, FakeConnection, Any]:
    """A flow that has read one entry of partition 0 (its first fetch done)."""
    f, conn = make()
    st0 = f.a.parts[TPS[0]]
    conn.add(st0.stream, 1)
    fetch(f, conn)
    return f, conn, st0


def test_a_fence_moved_between_fetches_stops_the_transaction() -> None:
    f, conn, st0 = read_one()
    # The coordinator hands partition 0 to another member while this one sits between
    # fetches: its watched fence changes, the next EXEC does not run.
    conn.set_fence(st0.fence_key, b"m2 9")
    conn.add(st0.stream, 1)
    assert fetch(f, conn) == []
    assert conn.delivered[st0.stream] == 1  # the new entry is left for its new owner
    assert conn.scripts > 0  # the script path, which reports the new holder, took over
    # Its trailing check saw the fence moved: the next fetch checks first, and stays off
    # the fast path while the fence is not ours.
    before = len(conn.sent)
    assert fetch(f, conn) == []
    assert conn.sent[before][0][0] == "WATCH" and conn.sent[before + 1] == [("UNWATCH",)]
    assert conn.delivered[st0.stream] == 1 and conn.txns_unguarded == 0


def test_a_replaced_connection_sends_no_transaction_without_a_check() -> None:
    f, conn, st0 = read_one()
    conn.connected_same = False  # reconnected (after a failover, say): its WATCH is gone
    conn.set_fence(st0.fence_key, b"m2 9")  # ... and the partition moved meanwhile
    conn.add(st0.stream, 1)
    assert fetch(f, conn) == []
    assert conn.delivered[st0.stream] == 1 and conn.txns_unguarded == 0
    conn.set_fence(st0.fence_key, st0.fence_bytes)  # (back to us, to see the path recover)
    assert [r.id for r in fetch(f, conn)] == ["2-0"] and conn.txns_unguarded == 0


def test_an_empty_read_with_known_tails_skips_the_script_path_but_not_after_a_wait() -> None:
    f, conn = make()
    for st in f.a.parts.values():
        conn.add(st.stream, 1)
    assert len(fetch(f, conn)) == 2
    assert {st.tail for st in f.a.parts.values()} == {"1-0"}  # the last ids read
    assert fetch(f, conn) == [] and conn.scripts == 0  # nothing new: the tails stand
    f._waited = True  # a blocking wait returned: its tails may be stale
    assert fetch(f, conn) == [] and conn.scripts == 2  # read afresh, one call a partition
    assert fetch(f, conn) == [] and conn.scripts == 2


def test_is_connected_on_every_redis_py_connection_kind() -> None:
    """same_connection's test of the socket: redis-py's own property where it has one
    (sync >= 5.1, asyncio), the socket of the sync connection of 5.0 otherwise."""
    import redis
    import redis.asyncio

    from partitions._client import wire

    assert not wire.is_connected(redis.Connection(port=1))  # type: ignore[no-untyped-call]
    assert not wire.is_connected(redis.asyncio.Connection(port=1))

    class Sync50:  # redis-py 5.0's sync connection: a socket, no property
        _sock: object | None = None

    old = Sync50()
    assert not wire.is_connected(old)
    old._sock = object()
    assert wire.is_connected(old)


def test_the_commands_that_repeat_are_packed_once() -> None:
    from partitions._client import wire
    from partitions._consumer import plans

    f, _ = make()
    parts = list(f.a.parts.values())
    cache = plans.PackCache()
    first = plans.plan_fast(f.a, parts, 1000, cache)
    again = plans.plan_fast(f.a, parts, 1000, cache)
    plain = plans.plan_fast(f.a, parts, 1000)
    assert [wire.pack(c) for c in plain.commands()] == wire.packed(first.commands())
    assert all(x is y for x, y in zip(first.check, again.check, strict=True))  # not repacked
    assert first.txn[1] is again.txn[1]  # the read of the same streams, the same count


def test_a_partition_granted_again_is_checked_again() -> None:
    f, conn, st0 = read_one()
    # Revoked and granted again (a new token, a new fence): the watch checked the old one.
    f.a.drop({TPS[0]})
    again = f.a.assign(TPS[0], 2)
    again.cursor = ""
    conn.fences[again.fence_key] = again.fence_bytes  # (its claim, before this connection's WATCH)
    before = len(conn.sent)
    conn.add(st0.stream, 1)
    assert [r.id for r in fetch(f, conn)] == ["2-0"]
    assert conn.sent[before][0][0] == "WATCH"  # a check of its own first
    assert conn.txns_unguarded == 0


def idle(f: ConsumerFlow, conn: FakeConnection) -> None:
    ops.drive(f.idle(1.0), conn.answer)


def test_an_idle_wait_rides_in_front_of_the_fetch() -> None:
    f, conn = make()
    s0, s1 = (st.stream for st in f.a.parts.values())
    conn.add(s0, 1)
    conn.add(s1, 1)
    fetch(f, conn)  # the tails are known now: 1-0 and 1-0
    f.a.fill([])
    conn.add(s1, 1)
    before = len(conn.sent)
    idle(f, conn)
    # One exchange: the blocking read first, then the fenced read it woke, then the next check.
    assert len(conn.sent) == before + 1
    sent = conn.sent[-1]
    assert sent[0][0] == "XREAD" and sent[1] == ("MULTI",) and sent[-1][0] == "HGET"
    assert isinstance(conn.ops[-1], ops.Exchange) and conn.ops[-1].block_ms > 0
    assert [r.id for r in f.a.take(10)] == ["2-0"]  # buffered, for the poll to hand out
    assert conn.txns_unguarded == 0


def test_a_wait_woken_for_nothing_new_reads_the_tails_afresh() -> None:
    f, conn = make()
    st0 = f.a.parts[TPS[0]]
    conn.add(st0.stream, 2)
    fetch(f, conn)
    st0.tail = "1-0"  # stale: 2-0 was delivered already (an admin moved the group, say)
    idle(f, conn)  # the wait returns at once for 2-0; the read finds nothing new
    assert conn.scripts == 0
    assert fetch(f, conn) == [] and conn.scripts == 2  # the script path: the tails afresh
    assert st0.tail == "2-0"


def test_a_wait_stays_on_its_own_connection_when_the_fetch_cannot_follow() -> None:
    f, conn = make()
    for st in f.a.parts.values():
        conn.add(st.stream, 1)
    fetch(f, conn)
    f._watched = None  # nothing watched on the data connection (a new one, say)
    idle(f, conn)
    assert isinstance(conn.ops[-1], ops.Wait)
    f._watched = set(f.a.parts.values())
    f.a.parts[TPS[1]].tail = ""  # a tail not known
    idle(f, conn)
    assert isinstance(conn.ops[-1], ops.Wait)
    f.a.parts[TPS[1]].tail = "1-0"
    f.a.parts[TPS[1]].next_reclaim = 0.0  # a reclaim pass due: the script path's read
    idle(f, conn)
    assert isinstance(conn.ops[-1], ops.Wait)
    f.a.parts[TPS[1]].next_reclaim = 1e18
    idle(f, conn)
    assert isinstance(conn.ops[-1], ops.Exchange) and conn.ops[-1].block_ms > 0
