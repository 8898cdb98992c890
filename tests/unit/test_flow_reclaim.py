"""ConsumerFlow.fetch's periodic reclaim pass on a single node, driven without a server: the
pass goes alone (``reclaim`` calls), and the new entries are still read by the fast path,
never by a scripted read that would take them through Lua."""

from __future__ import annotations

from typing import Any

from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow
from partitions._consumer.ops import Events

A, B = TopicPartition("t", 0), TopicPartition("t", 1)
NOTHING = [1, 0, [], b"", b"", 0, 0, []]  # consume.lua's reclaim reply: nothing was stuck


class _Runner:
    def session_alive(self, margin: float = 0.0) -> bool:
        return True

    def wake(self) -> None:
        pass


def make_flow(reclaim_replies: list[Any]) -> tuple[ConsumerFlow, list[Any]]:
    """A steady flow (both partitions recovered) whose wire is a recorder: script calls
    answer with ``reclaim_replies``, the fast path with one fresh record of B."""
    a = Assignment(Keys("ps"), "g", "m1", Layouts([TopicLayout("t", 2)]))
    for tp in (A, B):
        a.assign(tp, 1).cursor = ""
    f = ConsumerFlow(
        a, ConsumerConfig(), topics={}, runner=_Runner(), settings=GroupSettings,
        events=Events(lambda: None), listener=None, is_cluster=False,
    )  # fmt: skip
    sent: list[Any] = []

    def run(calls: list[Any], what: str, *, durable: bool = False) -> Any:
        sent.append([(c.args[0], c.st.tp) for c in calls])
        return reclaim_replies[: len(calls)]
        yield  # a generator step, like the real one

    def fast_fetch(parts: list[Any], wait: Any = None) -> Any:
        sent.append("fast")
        return [Record("t", 1, "100-0", b"k", b"v", {})]
        yield

    f.run = run  # type: ignore[method-assign]
    f.fast_fetch = fast_fetch  # type: ignore[method-assign]
    return f, sent


def step(s: Any) -> Any:
    try:
        while True:
            s.send(None)
    except StopIteration as done:
        return done.value


def test_a_due_reclaim_pass_goes_alone_and_the_fast_path_still_reads() -> None:
    f, sent = make_flow([NOTHING, NOTHING])
    records, refused = step(f.fetch(5, 60_000))
    assert sent == [[("reclaim", A), ("reclaim", B)], "fast"]
    assert [r.id for r in records] == ["100-0"] and refused == []
    step(f.fetch(5, 60_000))  # not due again for a while: the fast path alone
    assert sent[2:] == ["fast"]


def test_stuck_entries_found_are_what_the_fetch_returns() -> None:
    stuck = [1, 0, [[b"7-0", [b"key", b"k", b"value", b"v"]]], b"", b"", 0, 1, [1]]
    f, sent = make_flow([NOTHING, stuck])
    records, _ = step(f.fetch(5, 60_000))
    assert sent == [[("reclaim", A), ("reclaim", B)]]  # the dry partitions are read next
    assert [(r.partition, r.id, r._claim) for r in records] == [(1, "7-0", True)]


def test_no_reclaim_configured_no_reclaim_call() -> None:
    f, sent = make_flow([])
    step(f.fetch(5, 0))
    assert sent == ["fast"]
