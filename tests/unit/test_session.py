"""The runner's core (coordinator/session.py Session) driven without a server or threads:
scripted member replies, a fake clock; what both runners do, and in which order."""

from __future__ import annotations

from typing import Any

from coordinator.session import Beat, Join, Leave, Notify, ReleaseFence, Session, Wait
from partitions._base.errors import ConnectionFailedError, PollIntervalExceededError
from partitions._base.settings import GroupSettings
from partitions._base.steps import drive
from partitions._base.types import Grant, HeartbeatResult, TopicPartition

S = GroupSettings(heartbeat_interval_ms=100, session_timeout_ms=1000)
A, B, C = (TopicPartition("t", p) for p in range(3))


def reply(owned: dict[TopicPartition, int], revoke: set[TopicPartition] = frozenset()) -> Any:
    return HeartbeatResult(
        member_id="m",
        member_epoch=1,
        group_epoch=1,
        target_epoch=1,
        settings=S,
        owned={tp: Grant(token, 1) for tp, token in owned.items()},
        to_revoke=frozenset(revoke),
        pending=frozenset(),
    )


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Shell:
    """Performs the actions: member replies from a script, waits advance the clock; stops
    after ``ticks`` waits. Records what it was asked to do."""

    def __init__(self, replies: list[Any], clock: Clock, ticks: int) -> None:
        self.replies, self.clock, self.ticks = replies, clock, ticks
        self.done: list[Any] = []
        self.joined = False

    def __call__(self, action: Any) -> Any:
        self.done.append(action)
        if isinstance(action, Wait):
            self.clock.now += action.seconds
            self.ticks -= 1
            return None
        if isinstance(action, Join | Beat):
            out = self.replies.pop(0)
            if isinstance(out, BaseException):
                raise out
            self.joined = True
            return out
        if isinstance(action, Leave):
            self.joined = False
        return None

    def notes(self) -> list[tuple[str, frozenset[TopicPartition]]]:
        return [(a.kind, frozenset(a.partitions)) for a in self.done if isinstance(a, Notify)]


def run(session: Session, shell: Shell) -> None:
    drive(session.start_steps(), shell, errors=(Exception,))
    drive(
        session.loop_steps(lambda: shell.joined, lambda: shell.ticks <= 0),
        shell,
        errors=(Exception,),
    )


def test_revoked_partitions_are_reported_then_handed_back_at_once() -> None:
    clock = Clock()
    session = Session("m", "g", S, clock=clock)
    shell = Shell(
        [reply({A: 1, B: 2}), reply({A: 1, B: 2}, revoke={B}), reply({A: 1, C: 3})], clock, 3
    )
    run(session, shell)
    assert shell.notes() == [
        ("assigned", frozenset({A, B})),
        ("revoked", frozenset({B})),
        ("assigned", frozenset({C})),
    ]
    beats = [a for a in shell.done if isinstance(a, Beat)]
    assert beats[1].released == frozenset({B})  # the heartbeat right after the revoke
    waits = [a.seconds for a in shell.done if isinstance(a, Wait)]
    assert waits[1] == 0.0  # sent at once, not at the next interval
    assert session.owned == {A: Grant(1, 1), C: Grant(3, 1)} and not session.releasing


def test_failed_heartbeats_past_the_session_drop_everything() -> None:
    clock = Clock()
    session = Session("m", "g", S, clock=clock)
    down = ConnectionFailedError("down")
    shell = Shell([reply({A: 1}), *[down] * 30], clock, 30)
    run(session, shell)
    assert ("lost", frozenset({A})) in shell.notes()
    assert not session.owned and session.last_error is down


def test_no_poll_for_the_interval_releases_fences_leaves_and_reports_lost() -> None:
    clock = Clock()
    session = Session("m", "g", S, max_poll_interval_ms=300, clock=clock)
    shell = Shell([reply({A: 1, B: 2})] + [reply({A: 1, B: 2})] * 10, clock, 12)
    run(session, shell)
    kinds = [type(a).__name__ for a in shell.done]
    first_release = kinds.index("ReleaseFence")
    assert kinds[first_release : first_release + 4] == [
        "ReleaseFence",
        "ReleaseFence",
        "Leave",
        "Notify",
    ]
    assert {a.tp for a in shell.done if isinstance(a, ReleaseFence)} == {A, B}
    assert shell.notes()[-1] == ("lost", frozenset({A, B}))
    assert kinds.count("Leave") == 1  # it stays out until the application polls again
    left = session.poll_left
    assert isinstance(left, PollIntervalExceededError) and left.partitions == {A, B}
    assert session.begin_poll() is left  # raised once by the next request...
    assert session.poll_left is None  # ...which lets the loop rejoin


def test_close_revokes_what_is_owned_then_leaves() -> None:
    clock = Clock()
    session = Session("m", "g", S, clock=clock)
    shell = Shell([reply({A: 1})], clock, 0)
    drive(session.start_steps(), shell, errors=(Exception,))
    drive(session.close_steps(joined=lambda: shell.joined, leave=True, temporary=True), shell)
    assert shell.notes()[-1] == ("revoked", frozenset({A}))
    assert shell.done[-1] == Leave(temporary=True)
