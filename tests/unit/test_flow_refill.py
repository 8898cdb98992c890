"""ConsumerFlow.take's refill of dry caught-up partitions, driven without a server: the
fetch is replaced by a recorder, the flow's steps run to completion like a shell would."""

from __future__ import annotations

from typing import Any

from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._consumer import flow as flow_mod
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow
from partitions._consumer.ops import Events

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class _Runner:
    def session_alive(self, margin: float = 0.0) -> bool:
        return True

    def wake(self) -> None:
        pass


def rec(tp: TopicPartition, n: int) -> Record:
    return Record(tp.topic, tp.partition, f"{n}-0", b"k", b"v", {})


def make_flow() -> tuple[ConsumerFlow, list[list[TopicPartition]]]:
    a = Assignment(Keys("ps"), "g", "m1", Layouts([TopicLayout("t", 2)]))
    for tp in (A, B):
        a.assign(tp, 1).cursor = ""
    a.parts[B].catching_up = False  # B is read to its end; A is a taken-over backlog
    f = ConsumerFlow(
        a, ConsumerConfig(), topics={}, runner=_Runner(), settings=GroupSettings,
        events=Events(lambda: None), listener=None, is_cluster=False,
    )  # fmt: skip
    reads: list[list[TopicPartition]] = []
    fresh = iter(range(100, 200))

    def fetch(max_deliveries: int, reclaim_ms: int, tails: bool = True, wait: Any = None) -> Any:
        parts = [st.tp for st in a.reading()]
        reads.append(parts)
        return [rec(tp, next(fresh)) for tp in parts if tp == B], []
        yield  # a generator step, like the real fetch

    f.fetch = fetch  # type: ignore[method-assign]
    return f, reads


def run(step: Any) -> Any:
    try:
        while True:
            step.send(None)
    except StopIteration as done:
        return done.value


def test_a_dry_caught_up_partition_is_read_before_more_backlog_goes_out() -> None:
    f, reads = make_flow()
    f.a.fill([rec(A, i) for i in range(1, 11)])  # A's backlog is buffered, B ran dry
    out = run(f.take(4, 0.0))
    assert reads == [[B]]  # only the dry partition was read
    # Round-robin: B's fresh record goes out in this poll beside A's oldest ones.
    assert [(r.partition, r.id) for r in out] == [(0, "1-0"), (0, "2-0"), (1, "100-0"), (0, "3-0")]
    # Read again only after REFILL_AFTER_S: a poll right after hands out buffered records.
    out = run(f.take(4, 0.0))
    assert reads == [[B]] and {r.partition for r in out} == {0}
    f._fetched_at -= flow_mod.REFILL_AFTER_S
    out = run(f.take(4, 0.0))
    assert reads == [[B], [B]] and (1, "101-0") in [(r.partition, r.id) for r in out]


def test_a_dry_partition_still_catching_up_does_not_trigger_a_read() -> None:
    f, reads = make_flow()
    f.a.parts[B].catching_up = True
    f.a.fill([rec(A, 1), rec(A, 2)])
    assert [r.id for r in run(f.take(1, 0.0))] == ["1-0"] and reads == []
