"""The plans of a fetch, a hand-out and an ack, settled with replies recorded from a real
server (Valkey 9, ``consume.lua`` via FCALL; ids and fences as that run produced them)."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from partitions._base.errors import NotOwnerError, StateLostError
from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.types import TopicPartition
from partitions._consumer import plans
from partitions._consumer.assignment import STREAM_CONSUMER, Assignment
from partitions._consumer.calls import CONSUME, SEEK, ack_call, seek_call

TP = TopicPartition("rect", 0)
ID0, ID1, ID2 = "1796124626175-0", "1796124626175-1", "1796124626175-2"
ENTRIES = [
    [ID0.encode(), [b"key", b"k", b"value", b"v0"]],
    [ID1.encode(), [b"key", b"k", b"value", b"v1"]],
    [ID2.encode(), [b"key", b"k", b"value", b"v2"]],
]
# A takeover read: three entries recovered from the group's pending list (counts 0, 0, 0),
# recovery done (cursor ''), new entries left to the next read (tail '0').
TAKEOVER_READ = [1, 0, ENTRIES, b"", b"0", 0, 0, [0, 0, 0]]
FIRST_READ = [1, 0, ENTRIES, b"", b"", 0, 0, []]  # a first '>' read: all new
MOVED = rex.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")


def assignment(*tps: TopicPartition) -> Assignment:
    a = Assignment(Keys("ps"), "recg-a", "m1", Layouts([TopicLayout("rect", 2000)]))
    for tp in tps or (TP,):
        a.assign(tp, 7)
    return a


def test_read_call_mirrors_the_script_header() -> None:
    a = assignment()
    a.acks[TP] = ["1-0", "2-0"]
    plan = plans.plan_fetch(a, 100.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    (call,) = plan.calls
    assert call.function == CONSUME
    assert call.keys == ["ps:t:{rect:0}", "ps:t:{rect:0}:fence", "ps:t:{rect:0}:groups",
                         "ps:t:{rect:0}:dlq"]  # fmt: skip
    assert call.args == ["read", "recg-a", "m1 7", "rect", "0", STREAM_CONSUMER, 500, "-", 5,
                         0, "0", "", 2, "1-0", "2-0", 0]  # fmt: skip
    assert call.acks == ["1-0", "2-0"]
    assert plan.commands()[0][:3] == ("FCALL", CONSUME, 4)


def test_seek_call_takes_three_keys() -> None:
    st = assignment().parts[TP]
    call = seek_call(st, "5-0")
    assert call.function == SEEK and len(call.keys) == 3
    assert call.args == ["recg-a", "m1 7", "5-0", "0"]
    assert ack_call(st, ["1-0"]).args[-2:] == [STREAM_CONSUMER, "1-0"]


def test_reclaim_rides_along_only_when_due() -> None:
    a = assignment()
    first = plans.plan_fetch(a, 100.0, count=10, start="0", max_deliveries=5, reclaim_ms=8000)
    again = plans.plan_fetch(a, 101.0, count=10, start="0", max_deliveries=5, reclaim_ms=8000)
    later = plans.plan_fetch(a, 102.1, count=10, start="0", max_deliveries=5, reclaim_ms=8000)
    assert [p.calls[0].args[9] for p in (first, again, later)] == [8000, 0, 8000]


def test_a_takeover_read_settles_cursor_tail_and_marks_recovered_records() -> None:
    a = assignment()
    a.acks[TP] = ["1-0"]
    tally = plans.Tally()
    plan = plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    records, refused = plan.settle(a, [TAKEOVER_READ], tally)
    st = a.parts[TP]
    assert [r.id for r in records] == [ID0, ID1, ID2] and refused == []
    assert all(r._claim and r.deliveries == 1 for r in records)
    assert (st.cursor, st.tail) == ("", plans.RECOVERED)
    assert a.acks == {}  # the call ran: its acks are the server's


def test_new_records_need_no_recorded_hand_out() -> None:
    a = assignment()
    records, _ = plans.plan_fetch(
        a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0
    ).settle(a, [FIRST_READ], plans.Tally())
    assert [r.value for r in records] == [b"v0", b"v1", b"v2"]
    assert not any(r._claim for r in records)


def test_a_call_that_did_not_run_keeps_its_acks() -> None:
    other = TopicPartition("rect", 1)
    a = assignment(TP, other)
    a.acks[TP] = ["1-0"]
    a.acks[other] = ["2-0"]
    plan = plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    records, _ = plan.settle(a, [MOVED, FIRST_READ], plans.Tally())
    assert a.acks == {TP: ["1-0"]} and len(records) == 3
    assert a.parts[TP].cursor == "-"  # still to recover


def test_not_owner_is_refused_and_its_acks_counted() -> None:
    a = assignment()
    a.acks[TP] = ["1-0", "2-0"]
    tally = plans.Tally()
    plan = plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    _, refused = plan.settle(a, [[0, b"m2 9"]], tally)
    assert [(st.tp, res.detail) for st, res in refused] == [(TP, "m2 9")]
    assert tally.refused_acks == 2


def test_state_lost_raises() -> None:
    a = assignment()
    plan = plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    with pytest.raises(StateLostError, match="group of rect/0 vanished"):
        plan.settle(a, [[-1, b"group"]], plans.Tally())


def test_unsent_acks_ride_on_the_next_read_first() -> None:
    a = assignment()
    a.not_sent(TP, ["1-0"])
    a.acks[TP] = ["2-0"]
    plan = plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)
    assert plan.calls[0].acks == ["1-0", "2-0"] and a.unsent == {}


def test_hand_plan_carries_acks_and_settles_gone_ids() -> None:
    a = assignment()
    records, _ = plans.plan_fetch(
        a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0
    ).settle(a, [TAKEOVER_READ], plans.Tally())
    a.acks[TP] = ["1-0"]
    plan = plans.plan_hand(a, a.claims(records))
    (call,) = plan.calls
    assert call.args[0] == "hand" and call.args[6:] == [1, "1-0", ID0, 1, ID1, 1, ID2, 1]
    out = plan.settle(a, [[1, 1, [ID1.encode()]]], plans.Tally())
    assert out.gone == {ID1} and not out.refused and not out.again
    assert [r.id for r in a.recorded(records, out.gone, set())] == [ID0, ID2]
    assert not any(r._claim for r in records if r.id != ID1)


def test_hand_plan_that_did_not_run_recovers_from_the_last_handed() -> None:
    a = assignment()
    st = a.parts[TP]
    st.cursor, st.last_id = "", ID0
    records, _ = plans.plan_fetch(
        a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0
    ).settle(a, [TAKEOVER_READ], plans.Tally())
    a.acks[TP] = ["1-0"]
    plan = plans.plan_hand(a, a.claims(records))
    out = plan.settle(a, [MOVED], plans.Tally())
    assert out.again == {TP} and st.cursor == ID0 and a.unsent == {TP: ["1-0"]}


def test_a_lost_hand_call_is_taken_back_by_the_next_read_until_one_runs() -> None:
    # A hand call whose outcome is unknown may have recorded its hand-outs, none of which
    # was made: the next read of the partition carries them (id, deliveries) to be taken
    # back before its recovery judges the entries by their counts; again on every read until
    # one runs; forgotten with the partition.
    a = assignment()
    records, _ = plans.plan_fetch(
        a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0
    ).settle(a, [TAKEOVER_READ], plans.Tally())
    plan = plans.plan_hand(a, a.claims(records))
    assert plan.calls[0].handed == [(ID0, 1), (ID1, 1), (ID2, 1)]
    plan.unknown(a)
    assert a.unhanded == {TP: {ID0: 1, ID1: 1, ID2: 1}}

    def read() -> plans.FetchPlan:
        return plans.plan_fetch(a, 0.0, count=500, start="0", max_deliveries=5, reclaim_ms=0)

    lost = read()
    assert lost.calls[0].args[-7:] == [3, ID0, 1, ID1, 1, ID2, 1]
    moved = read()
    moved.settle(a, [MOVED], plans.Tally())  # did not run: still to take back
    assert a.unhanded == {TP: {ID0: 1, ID1: 1, ID2: 1}}
    read().settle(a, [TAKEOVER_READ], plans.Tally())
    assert a.unhanded == {} and read().calls[0].args[-1] == 0
    plans.plan_hand(a, a.claims(records)).unknown(a)
    a.drop({TP})
    assert a.unhanded == {}


def test_ack_plan_outcomes() -> None:
    other = TopicPartition("rect", 1)
    a = assignment(TP, other)
    plan = plans.plan_ack(a, {TP: [ID0, ID1], other: ["3-0"]})
    tally = plans.Tally()
    refused = plan.settle(a, [[1, 2], MOVED], tally)
    assert refused == [] and a.unsent == {other: ["3-0"]}
    plan = plans.plan_ack(a, {TP: [ID2]})
    assert [st.tp for st, _ in plan.settle(a, [[0, b"nobody"]], tally)] == [TP]
    assert tally.refused_acks == 1
    plan.unknown(a)
    assert a.unsent == {other: ["3-0"], TP: [ID2]}


def test_retry_and_seek_replies() -> None:
    a = assignment()
    st = a.parts[TP]
    call = ack_call(st, [])
    tally = plans.Tally()
    assert plans.settle_ids(call, [1, [ID2.encode()], 0], "retrying", tally) == {ID2}
    assert plans.settle_ids(call, [1, [], 1], "dead-lettering", tally) == set()
    assert tally.dead_lettered == 1
    with pytest.raises(NotOwnerError):
        plans.settle_ids(call, [0, b"m2 9"], "retrying", tally)
    assert plans.settle_seek(st, [1, b"0-0"]) == "0-0" and st.cursor == ""
    with pytest.raises(NotOwnerError):
        plans.settle_seek(st, [0, b"nobody"])
    with pytest.raises(StateLostError):
        plans.settle_seek(st, [-1, b"group"])


def test_fast_path_check_and_transaction() -> None:
    a = assignment()
    st = a.parts[TP]
    st.cursor = ""
    assert plans.fast_ok([st], 0, 0.0) and not plans.fast_ok([], 0, 0.0)
    check = plans.fast_check([st], "recg-a")
    assert check[0] == ("WATCH", st.fence_key)
    assert plans.fast_checked([st], [b"OK", b"m1 7", None])
    assert not plans.fast_checked([st], [b"OK", b"m2 9", None])  # the fence moved
    assert not plans.fast_checked([st], [b"OK", b"m1 7", b"0"])  # a reclaim was asked
    a.acks[TP] = [ID0]
    plan = plans.plan_fast(a, [st], 500)
    assert plan.txn[1] == ("XACK", st.stream, "recg-a", ID0)
    # RESP2: EXEC answers [XACK's count, [[stream, entries]]].
    exec_reply = [1, [[st.stream.encode(), ENTRIES[1:]]]]
    records = plan.settle(a, [b"OK", b"QUEUED", b"QUEUED", exec_reply], plans.Tally())
    assert records is not None and [r.id for r in records] == [ID1, ID2]
    assert a.acks == {}
    assert plans.plan_fast(a, [st], 500).settle(a, [b"OK", b"QUEUED", None], plans.Tally()) is None


# -- the catch-up budget ------------------------------------------------------------------
def test_catching_up_partitions_share_the_budget_while_others_are_caught_up() -> None:
    tps = [TopicPartition("rect", p) for p in range(6)]
    a = assignment(*tps)
    for tp in tps[:2]:
        a.parts[tp].catching_up = False  # unmoved: read to their end before
        a.parts[tp].last_read = 900  # busy: the pace is not what bounds the slices
    plan = plans.plan_fetch(a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0)
    each = max(plans.CATCH_UP_MIN, plans.CATCH_UP_BUDGET // 4)
    assert plan.counts == [1000, 1000, each, each, each, each]
    assert [c.args[6] for c in plan.calls] == plan.counts  # the COUNT each read sends
    assert sum(plan.counts[2:]) <= plans.CATCH_UP_BUDGET


def test_catch_up_reads_follow_the_pace_of_the_caught_up_partitions() -> None:
    tps = [TopicPartition("rect", p) for p in range(4)]
    a = assignment(*tps)
    for tp, got in zip(tps[:2], (5, 10), strict=True):
        a.parts[tp].catching_up = False
        a.parts[tp].last_read = got
    # Twice their mean last read (7.5 -> 15 each), within the budget.
    assert plans.read_counts(a, a.reading(), 1000) == [1000, 1000, 15, 15]
    # Quiet partitions: each catching-up one still reads CATCH_UP_MIN.
    a.parts[tps[0]].last_read = a.parts[tps[1]].last_read = 0
    assert plans.read_counts(a, a.reading(), 1000)[2:] == [plans.CATCH_UP_MIN] * 2
    # What a read returns is the partition's pace.
    plans.caught_up(a.parts[tps[0]], 1000, 40)
    assert a.parts[tps[0]].last_read == 40


def test_beside_idle_partitions_catch_up_slices_grow_within_the_idle_budget() -> None:
    tps = [TopicPartition("rect", p) for p in range(16)]
    a = assignment(*tps)
    idle = a.parts[tps[0]]
    idle.catching_up, idle.last_read = False, 0  # at its end, nothing new
    behind = list(a.parts.values())[1:]
    for st in behind:
        st.cursor = ""
    share = plans.CATCH_UP_IDLE_BUDGET // 15
    # The first slice is CATCH_UP_MIN; each read in full doubles the next, up to the share.
    seen = []
    for _ in range(8):
        counts = plans.read_counts(a, a.reading(), 1000)
        assert counts[0] == 1000 and len(set(counts[1:])) == 1
        assert sum(counts[1:]) <= plans.CATCH_UP_IDLE_BUDGET
        seen.append(counts[1])
        for st, n in zip(behind, counts[1:], strict=True):
            plans.caught_up(st, n, n)  # a full read: still behind
    assert seen == [8, 16, 32, 64, share, share, share, share]
    assert all(st.catching_up for st in behind)
    # A record on the caught-up partition: its pace bounds the slices again.
    plans.caught_up(idle, 1000, 1)
    assert set(plans.read_counts(a, a.reading(), 1000)[1:]) == {plans.CATCH_UP_MIN}
    # Never more than the count.
    idle.last_read = 0
    assert set(plans.read_counts(a, a.reading(), 20)[1:]) == {20}


def test_a_tail_beside_an_idle_partition_drains_in_a_few_fetches() -> None:
    """The consume bench's tail: one partition at its end, 15 with 500 entries left each;
    with a fixed CATCH_UP_MIN (8) it took 63 fetches, the raw loop reads it in one."""
    tps = [TopicPartition("rect", p) for p in range(16)]
    a = assignment(*tps)
    for st in a.parts.values():
        st.cursor = ""  # nothing to recover: new entries only
    a.parts[tps[0]].catching_up = False
    left = {tp: 500 for tp in tps[1:]}
    fetches = 0
    while any(st.catching_up for st in a.parts.values()):
        fetches += 1
        parts = a.reading()
        for st, n in zip(parts, plans.read_counts(a, parts, 1000), strict=True):
            got = min(n, left.get(st.tp, 0))
            if st.tp in left:
                left[st.tp] -= got
            plans.caught_up(st, n, got)
        assert fetches < 100
    assert not any(left.values())
    assert fetches <= 12


def test_no_budget_when_every_partition_is_behind_or_none_is() -> None:
    tps = [TopicPartition("rect", p) for p in range(3)]
    a = assignment(*tps)  # a first assignment: all catching up, nobody waits for them
    assert plans.read_counts(a, a.reading(), 1000) == [1000, 1000, 1000]
    for st in a.parts.values():
        st.catching_up = False
    assert plans.read_counts(a, a.reading(), 1000) == [1000, 1000, 1000]


def test_budget_never_starves_a_partition_nor_exceeds_the_count() -> None:
    tps = [TopicPartition("rect", p) for p in range(1001)]
    a = assignment(*tps)
    a.parts[tps[0]].catching_up = False
    counts = plans.read_counts(a, a.reading(), 1000)
    assert counts[0] == 1000 and set(counts[1:]) == {plans.CATCH_UP_MIN}
    assert set(plans.read_counts(a, a.reading(), 4)[1:]) == {4}


def test_a_read_short_of_its_count_ends_catching_up() -> None:
    other = TopicPartition("rect", 1)
    a = assignment(TP, other)
    a.parts[other].catching_up = False
    plan = plans.plan_fetch(a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0)
    asked = plan.counts[0]
    # Recovery not done (a cursor left): still catching up, whatever came back.
    paging = [1, 0, ENTRIES[:1], ID0.encode(), b"", 0, 0, [0]]
    plan.settle(a, [paging, FIRST_READ], plans.Tally())
    assert a.parts[TP].catching_up and a.parts[TP].cursor == ID0
    # A full read: more may follow.
    full = [1, 0, ENTRIES * (asked // 3) + ENTRIES[: asked % 3], b"", b"", 0, 0, []]
    plan = plans.plan_fetch(a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0)
    plan.settle(a, [full, FIRST_READ], plans.Tally())
    assert a.parts[TP].catching_up
    # The read that ends the recovery read nothing new: it says nothing of the stream's end.
    plan = plans.plan_fetch(a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0)
    plan.settle(a, [TAKEOVER_READ, FIRST_READ], plans.Tally())
    assert a.parts[TP].catching_up and a.parts[TP].cursor == ""
    # Fewer new entries than asked with recovery done: it reached the end of its stream.
    plan = plans.plan_fetch(a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0)
    plan.settle(a, [FIRST_READ, FIRST_READ], plans.Tally())
    assert not a.parts[TP].catching_up
    assert plans.plan_fetch(
        a, 0.0, count=1000, start="0", max_deliveries=5, reclaim_ms=0
    ).counts == [1000, 1000]


def test_fast_path_reads_catching_up_streams_with_their_own_count() -> None:
    other = TopicPartition("rect", 1)
    a = assignment(TP, other)
    st, caught = a.parts[TP], a.parts[other]
    st.cursor = caught.cursor = ""
    caught.catching_up = False
    caught.last_read = 900
    plan = plans.plan_fast(a, [st, caught], 1000)
    reads = [c for c in plan.txn if c[0] == "XREADGROUP"]
    each = max(plans.CATCH_UP_MIN, plans.CATCH_UP_BUDGET)
    assert [(c[5], c[7:]) for c in reads] == [
        (each, (st.stream, ">")),
        (1000, (caught.stream, ">")),
    ]
    # RESP3: each XREADGROUP answers a map; the caught-up stream had nothing new (None).
    exec_reply = [{st.stream.encode(): ENTRIES}, None]
    records = plan.settle(a, [b"OK", b"QUEUED", b"QUEUED", exec_reply], plans.Tally())
    assert records is not None and [r.id for r in records] == [ID0, ID1, ID2]
    assert not st.catching_up  # 3 < its budget: at the end of its stream


# -- a reclaim pass on its own (single node) ----------------------------------------------
def test_a_reclaim_pass_due_goes_alone_and_settles_without_touching_cursor_or_tail() -> None:
    a = assignment()
    st = a.parts[TP]
    st.cursor, st.tail = "", "5-0"
    assert plans.reclaim_due([st], 0, 100.0) == []  # no periodic reclaim configured
    assert plans.reclaim_due([st], 8000, 100.0) == [st]
    plan = plans.plan_reclaim([st], 100.0, count=500, max_deliveries=5, reclaim_ms=8000)
    assert plans.reclaim_due([st], 8000, 101.0) == []  # next one in reclaim_every(8000) s
    assert plans.reclaim_due([st], 8000, 100.0 + plans.reclaim_every(8000)) == [st]
    (call,) = plan.calls
    assert call.function == CONSUME and call.acks == []
    assert call.args == ["reclaim", "recg-a", "m1 7", "rect", "0", STREAM_CONSUMER, 500, 5,
                         8000, ""]  # fmt: skip
    # The reply has the read's shape (consume.lua): every entry recovered, counts 1, 0, 2.
    tally = plans.Tally()
    records, refused = plan.settle([[1, 0, ENTRIES, b"", b"", 0, 3, [1, 0, 2]]], tally)
    assert [(r.id, r.deliveries, r._claim) for r in records] == [
        (ID0, 2, True), (ID1, 1, True), (ID2, 3, True)]  # fmt: skip
    assert refused == [] and tally.reclaimed == 3
    assert (st.cursor, st.tail) == ("", "5-0")
    _, refused = plan.settle([[0, b"m2 9"]], tally)
    assert [(s.tp, res.detail) for s, res in refused] == [(TP, "m2 9")]
    assert plan.settle([MOVED], tally) == ([], [])  # did not run: nothing recovered
