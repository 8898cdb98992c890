"""Riding out a failover (partitions/_base/failover.py): which errors are the seconds of a
failover, how long a call keeps trying, and the member's calls and join riding it. No
server: recorded replies and fake clients, a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

from coordinator.member import MemberCore
from partitions._base.errors import (
    ConnectionFailedError,
    FencedError,
    PartstreamError,
    translate,
)
from partitions._base.failover import budget, ride_steps, transient
from partitions._base.functions import Refresh, Send
from partitions._base.keys import Keys
from partitions._base.settings import GroupSettings
from partitions._base.steps import Pause, Steps, drive
from tests.unit.test_member_core import ASSIGNED, DESCRIBED, GRANTED, JOINED, SETTINGS


def _from(cause: Exception) -> Exception:
    try:
        raise translate(cause, "a call") from cause
    except PartstreamError as err:
        return err


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (rex.ConnectionError("Connection closed by server."), True),
        (rex.TimeoutError("Timeout reading from socket"), True),
        (rex.MovedError("3999 127.0.0.1:7001"), True),
        (rex.AskError("3999 127.0.0.1:7001"), True),
        (rex.TryAgainError("Multiple keys request during rehashing of slot"), True),
        (rex.ClusterDownError("The cluster is down"), True),
        (rex.MasterDownError("Link with MASTER is down"), True),
        (rex.ReadOnlyError("You can't write against a read only replica."), True),
        (rex.BusyLoadingError("Valkey is loading the dataset in memory"), True),
        (rex.ResponseError("LOADING Valkey is loading the dataset in memory"), True),
        (rex.RedisClusterException("Redis Cluster cannot be connected. Please provide"), True),
        (rex.SlotNotCoveredError("Slot 12 is not covered by the cluster."), True),
        (_from(rex.ConnectionError("Connection reset by peer")), True),  # translated
        (rex.AuthenticationError("invalid username-password pair"), False),
        (_from(rex.AuthenticationError("invalid username-password pair")), False),
        (rex.NoPermissionError("this user has no permissions to run the 'xadd' command"), False),
        (rex.ResponseError("WRONGTYPE Operation against a key"), False),
        (rex.RedisClusterException("Keys in request don't hash to the same slot"), False),
        (PartstreamError("a script said no"), False),
        (FencedError("stale epoch"), False),
    ],
)
def test_transient_is_what_a_failover_answers_for_a_few_seconds(
    err: Exception, expected: bool
) -> None:
    assert transient(err) is expected


class _Cluster:
    """Looks like a cluster client to fails_over(); never called."""

    def get_node_from_key(self, key: str) -> Any:
        raise AssertionError("not called")


class _Sentinel:
    class connection_pool:
        sentinel_manager = object()


def test_the_budget_is_the_session_timeout_within_10_to_30_s_where_primaries_change() -> None:
    assert budget(object(), 1000) == 0.0  # a single server: nothing to wait for
    assert budget(_Cluster(), 1000) == 10.0
    assert budget(_Cluster(), 20_000) == 20.0
    assert budget(_Sentinel(), 45_000) == 30.0
    assert budget(_Cluster()) == 30.0  # not a member's call: the failover grace


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _perform(outcomes: list[Any], clock: _Clock, seen: list[Any]) -> Any:
    def perform(action: Any) -> Any:
        seen.append(action)
        if isinstance(action, Pause):
            clock.now += action.seconds
            return None
        if isinstance(action, Refresh):
            return None
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    return perform


def _call() -> Steps[Any]:
    return (yield Send(("GET", "k")))


def test_a_call_rides_out_a_failover_learning_the_slot_map_between_tries() -> None:
    clock, seen = _Clock(), []
    lost = rex.ConnectionError("Connection closed by server.")
    outcomes: list[Any] = [lost, rex.ClusterDownError("down"), b"v"]
    steps = ride_steps(_call, 10.0, cluster=True, clock=clock)
    assert drive(steps, _perform(outcomes, clock, seen)) == b"v"
    kinds = [type(a).__name__ for a in seen]
    assert kinds == ["Send", "Refresh", "Pause", "Send", "Refresh", "Pause", "Send"]
    assert seen[1].error is lost


def test_without_a_cluster_it_only_pauses_and_it_gives_up_when_the_budget_is_spent() -> None:
    clock, seen = _Clock(), []
    outcomes: list[Any] = [rex.TimeoutError("t")] * 100
    with pytest.raises(rex.TimeoutError):
        drive(ride_steps(_call, 3.0, cluster=False, clock=clock), _perform(outcomes, clock, seen))
    assert not any(isinstance(a, Refresh) for a in seen)
    assert 2.0 < clock.now <= 3.0  # paused for (nearly) the budget, never past it


def test_errors_that_are_no_failover_and_a_zero_budget_are_raised_at_once() -> None:
    for budget_s, err in ((10.0, rex.ResponseError("WRONGTYPE x")), (0.0, rex.TimeoutError("t"))):
        clock, seen = _Clock(), []
        with pytest.raises(type(err)):
            drive(
                ride_steps(_call, budget_s, cluster=True, clock=clock), _perform([err], clock, seen)
            )
        assert len(seen) == 1


UNKNOWN = [b"ERR", b"UNKNOWN_MEMBER", b"member m1 is not in the group"]


class _Script:
    """Answers each Send with the next reply (an exception is raised); Refresh and Pause
    are done at once. Remembers the operations sent."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.ops: list[str] = []
        self.refreshed = 0

    def __call__(self, action: Any) -> Any:
        if isinstance(action, Pause):
            return None
        if isinstance(action, Refresh):
            self.refreshed += 1
            return None
        assert isinstance(action, Send), action
        cmd = action.command
        self.ops.append(cmd[3 + int(cmd[2])] if cmd[0] == "FCALL" else cmd[0])
        if cmd[0] == "FCALL" and self.ops[-1] == "join":
            self.ops[-1] += "/" + cmd[3 + int(cmd[2]) + 5]  # the rejoin flag
        out = self.replies.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


def _member(client: Any) -> MemberCore:
    return MemberCore(client, Keys("rec"), "g", {"t": 2}, member_id="m1", settings=SETTINGS)


def test_a_members_heartbeat_on_a_cluster_is_sent_again_after_the_node_died() -> None:
    member = _member(_Cluster())
    drive(member.join_steps(), _Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED]))
    dead = rex.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused.")
    script = _Script([dead, rex.MovedError("42 127.0.0.1:7003"), GRANTED])
    result = drive(member.heartbeat_steps(), script)
    assert script.ops == ["heartbeat"] * 3 and script.refreshed == 2
    assert len(result.owned) == 2


def test_on_a_single_server_a_members_call_fails_at_once() -> None:
    member = _member(None)
    drive(member.join_steps(), _Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED]))
    script = _Script([rex.ConnectionError("Connection closed by server.")])
    with pytest.raises(ConnectionFailedError):
        drive(member.heartbeat_steps(), script)
    assert script.ops == ["heartbeat"]


def test_a_join_evicted_before_its_settling_heartbeat_joins_once_more_as_a_first_join() -> None:
    member = _member(None)
    script = _Script(
        [JOINED, 1, DESCRIBED, ASSIGNED, UNKNOWN, JOINED, DESCRIBED, ASSIGNED, GRANTED]
    )
    result = drive(member.join_steps(), script)
    assert script.ops == [
        "join/0", "SADD", "describe", "assign", "heartbeat",
        "join/0", "describe", "assign", "heartbeat",
    ]  # fmt: skip
    assert len(result.owned) == 2 and result.created_group and member.joined


def test_a_join_evicted_twice_raises() -> None:
    member = _member(None)
    script = _Script(
        [JOINED, 1, DESCRIBED, ASSIGNED, UNKNOWN, JOINED, DESCRIBED, ASSIGNED, UNKNOWN]
    )
    with pytest.raises(PartstreamError, match="not in the group"):
        drive(member.join_steps(), script)
    assert not member.joined


def test_group_settings_stay_valid_for_the_budget() -> None:
    assert budget(_Cluster(), GroupSettings().session_timeout_ms) == 30.0  # 30 s default
