"""Assignment state transitions, without a server: where a record is after each step."""

from __future__ import annotations

from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.records import Record, _Redelivered
from partitions._base.types import TopicPartition
from partitions._consumer.assignment import Assignment

A, B, C = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)


def rec(tp: TopicPartition, n: int, deliveries: int = 0) -> Record:
    r = Record(tp.topic, tp.partition, f"{n}-0", b"k", b"v", {})
    return _Redelivered(r, deliveries) if deliveries else r


def owned(*tps: TopicPartition) -> Assignment:
    a = Assignment(Keys("ps"), "g", "m1", Layouts([TopicLayout("t", 8)]))  # original tags
    for tp in tps:
        a.assign(tp, 3)
    return a


def test_a_new_partition_starts_with_takeover_recovery() -> None:
    st = owned(A).parts[A]
    assert (st.cursor, st.tail, st.last_id, st.fence) == ("-", "", None, "m1 3")
    assert st.catching_up
    assert st.stream == "ps:t:{t:0}" and st.fence_key == "ps:t:{t:0}:fence"


def test_take_hands_out_in_order_and_notes_positions() -> None:
    a = owned(A, B)
    a.fill([rec(A, 1), rec(A, 2), rec(B, 1)])
    out = a.take(2)
    a.handed_out(out)
    assert [(r.partition, r.id) for r in out] == [(0, "1-0"), (1, "1-0")] and a.buffered()
    assert a.parts[A].last_id == "1-0" and a.parts[B].last_id == "1-0"
    assert [r.id for r in a.take(5)] == ["2-0"] and not a.buffered()


def test_a_suspect_goes_out_alone() -> None:
    fresh, suspect = rec(A, 1, deliveries=1), rec(A, 2, deliveries=2)
    a = owned(A, B)
    a.fill([fresh, suspect, rec(A, 3), rec(B, 1)])
    # The batch stops before the suspect (B's record may ride along), then it goes alone.
    assert [(r.partition, r.id) for r in a.take(10)] == [(0, "1-0"), (1, "1-0")]
    assert a.take(10) == [suspect]
    assert [r.id for r in a.take(10)] == ["3-0"]
    assert list(a.claims([fresh, rec(A, 9)])) == [A]


def test_a_suspect_at_a_head_goes_first_and_alone() -> None:
    suspect = rec(B, 1, deliveries=3)
    a = owned(A, B)
    a.fill([rec(A, 1), rec(A, 2), suspect])
    assert a.take(10) == [suspect]
    assert [r.id for r in a.take(10)] == ["1-0", "2-0"]


def test_take_is_round_robin_over_partitions_holding_records() -> None:
    a = owned(A, B, C)
    # A's backlog (a takeover) came first in the fetch; B and C hold one fresh record each.
    a.fill([*(rec(A, i) for i in range(1, 9)), rec(B, 1), rec(C, 1)])
    first = a.take(4)
    assert sorted((r.partition, r.id) for r in first) == [(0, "1-0"), (0, "2-0"),
                                                          (1, "1-0"), (2, "1-0")]  # fmt: skip
    assert [r.id for r in a.take(100)] == [f"{i}-0" for i in range(3, 9)]


def test_take_rotates_the_turn_so_no_partition_waits_behind_another() -> None:
    a = owned(A, B, C)
    a.fill([*(rec(A, i) for i in range(1, 5)), *(rec(B, i) for i in range(1, 5)),
            *(rec(C, i) for i in range(1, 5))])  # fmt: skip
    served = [r.partition for _ in range(6) for r in a.take(2)]
    # Two records a poll over three partitions: each partition is served every other poll.
    assert [served.count(p) for p in (0, 1, 2)] == [4, 4, 4]
    assert served[:2] == [0, 1] and served[2:4] == [2, 0]
    assert not a.buffered()


def test_take_keeps_each_partitions_order() -> None:
    a = owned(A, B)
    a.fill([*(rec(A, i) for i in range(1, 40)), *(rec(B, i) for i in range(1, 7))])
    seen: dict[int, list[int]] = {0: [], 1: []}
    while a.buffered():
        for r in a.take(7):
            seen[r.partition].append(int(r.id.split("-")[0]))
    assert seen == {0: list(range(1, 40)), 1: list(range(1, 7))}


def test_only_dry_partitions_are_read_and_a_dry_caught_up_one_is_due() -> None:
    a = owned(A, B)
    a.parts[A].catching_up = a.parts[B].catching_up = False
    assert [st.tp for st in a.reading()] == [A, B] and not a.refill_due()
    a.fill([rec(A, 1), rec(A, 2), rec(B, 1)])
    assert a.reading() == [] and not a.refill_due()
    a.take(2)  # B ran dry, A still holds a record
    assert [st.tp for st in a.reading()] == [B] and a.refill_due()
    a.fill([rec(B, 2)])
    assert a.reading() == [] and [r.id for r in a.take(5)] == ["2-0", "2-0"]


def test_a_dry_partition_still_catching_up_is_not_a_reason_to_refill() -> None:
    a = owned(A, B)  # both taken over: catching up
    a.fill([rec(A, 1), rec(A, 2), rec(B, 1)])
    a.take(2)
    assert [st.tp for st in a.reading()] == [B] and not a.refill_due()


def test_seek_starts_catching_up_again() -> None:
    a = owned(A)
    a.parts[A].catching_up = False
    a.seek(A)
    assert a.parts[A].catching_up


def test_auto_commit_confirms_the_previous_poll() -> None:
    a = owned(A, B)
    batch = [rec(A, 1), rec(B, 1), rec(A, 2)]
    a.note_poll(batch, auto_commit=True)
    a.confirm_handed()
    assert a.handed == [] and a.acks == {A: ["1-0", "2-0"], B: ["1-0"]}
    assert a.take_acks(only={B}) == {B: ["1-0"]} and a.acks == {A: ["1-0", "2-0"]}


def test_manual_commits_accumulate_and_include_the_current_record() -> None:
    a = owned(A)
    a.note_poll([rec(A, 1)], auto_commit=False)
    a.note_poll([rec(A, 2)], auto_commit=False)
    a.current = rec(A, 3)
    a.confirm_all()
    assert a.acks == {A: ["1-0", "2-0", "3-0"]} and a.current is None and a.handed == []


def test_confirm_skips_partitions_no_longer_owned() -> None:
    a = owned(A)
    a.confirm([rec(A, 1), rec(B, 1)])
    assert a.acks == {A: ["1-0"]}


def test_drop_forgets_everything_of_the_partition() -> None:
    a = owned(A, B)
    a.fill([rec(A, 1), rec(B, 1), rec(A, 2)])
    a.handed_out(a.take(1))
    a.note_poll([rec(A, 0), rec(B, 0)], auto_commit=False)
    a.current = rec(A, 9)
    a.acks[A] = ["0-0"]
    assert a.drop({A}) == [A]
    assert set(a.parts) == {B} and a.acks == {} and a.current is None
    assert [(r.partition, r.id) for r in a.handed] == [(1, "0-0")]
    assert [(r.partition, r.id) for r in a.take(10)] == [(1, "1-0")]


def test_forget_and_push_front_for_a_nack() -> None:
    a = owned(A)
    r1, r2 = rec(A, 1), rec(A, 2)
    a.fill([r2])
    a.note_poll([r1], auto_commit=False)
    a.forget(r1)
    a.push_front(r1.again())
    # Handed out before and back again: a suspect, it goes out alone, then the rest.
    assert a.handed == [] and [r.id for r in a.take(5)] == ["1-0"]
    assert [r.id for r in a.take(5)] == ["2-0"]


def test_seek_drops_buffer_handed_and_acks_of_the_partition() -> None:
    a = owned(A, B)
    a.fill([rec(A, 5), rec(B, 5)])
    a.note_poll([rec(A, 1)], auto_commit=False)
    a.acks[A] = ["1-0"]
    a.seek(A)
    assert a.handed == [] and a.acks == {} and [r.partition for r in a.take(5)] == [1]


def test_outcome_unknown_recovers_from_the_last_handed_out() -> None:
    a = owned(A, B)
    a.parts[A].cursor = a.parts[B].cursor = ""
    a.fill([rec(A, 1), rec(A, 2)])
    a.handed_out(a.take(1))
    a.recover_from_handed()
    assert not a.buffered()
    assert (a.parts[A].cursor, a.parts[B].cursor) == ("1-0", "-")


def test_waiting_watches_only_caught_up_partitions() -> None:
    a = owned(A, B)
    a.parts[A].cursor, a.parts[A].tail = "", "7-0"
    a.parts[B].tail = "3-0"  # still recovering
    assert a.waiting() == {"ps:t:{t:0}": "7-0"}


def test_unsent_acks_go_first_with_the_next_read() -> None:
    a = owned(A)
    a.acks[A] = ["2-0"]
    a.not_sent(A, ["1-0"])
    a.not_sent(B, ["9-0"])  # not owned any more: its pending entries are its owner's
    assert a.acks_for_read() == {A: ["1-0", "2-0"]}
    a.acks_sent([A])
    assert a.acks == {} and a.unsent == {}
