"""The member's requests and steps (coordinator/member.py MemberCore), driven with replies
recorded from member.lua/admin.lua on a real server; no server here."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.member import (
    MemberCore,
    assign_request,
    heartbeat_request,
    join_request,
    leave_request,
)
from partitions._base.errors import FencedError, UnknownMemberError
from partitions._base.fence import fence_held, fence_request
from partitions._base.functions import Send, function_name
from partitions._base.keys import Keys, TopicLayout
from partitions._base.settings import GroupSettings
from partitions._base.steps import adrive, drive
from partitions._base.types import TopicPartition

KEYS = Keys("rec")
SETTINGS = GroupSettings(heartbeat_interval_ms=100, session_timeout_ms=1000)
CFG = [
    b"assignor", b"uniform", b"session_timeout_ms", b"1000", b"heartbeat_interval_ms", b"100",
    b"max_deliveries", b"5", b"reclaim_idle_ms", b"60000", b"acks", b"1",
    b"min_insync_replicas", b"1", b"fsync", b"none",
]  # fmt: skip
# Recorded: a first member joins an empty group, which it creates (target not computed yet).
JOINED = [b"OK", b"m1", 1, 1, 0, CFG, [], [], [], 1]
DESCRIBED = [
    b"OK",
    1796125189051,
    CFG,
    [b"grant", b"1796125189050000", b"epoch", b"1", b"target_epoch", b"0",
     b"created_ms", b"1796125189050", b"topic:t", b"2"],
    [b"m1", b'{"i":"","l":0,"c":"","o":"","pe":1,"t":"t","e":1}', b"1796125189050", b""],
    [],
]  # fmt: skip
ASSIGNED = [b"OK"]
GRANTED = [
    b"OK", b"m1", 1, 1, 1, CFG,
    [b"t:0", b"1796125189050001", b"1", b"t:1", b"1796125189050002", b"1"], [], [], 0,
]  # fmt: skip
FENCED = [b"ERR", b"FENCED", b"member epoch 1 is stale (current 3)"]


class Script:
    """Answers each Send with the next recorded reply; remembers the commands sent."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[tuple[Any, ...]] = []

    def __call__(self, action: Any) -> Any:
        assert isinstance(action, Send), action
        self.sent.append(action.command)
        return self.replies.pop(0)


def op(command: tuple[Any, ...]) -> Any:
    """The operation of an FCALL (its first argument after the keys), else the command."""
    return command[3 + int(command[2])] if command[0] == "FCALL" else command[0]


def core() -> MemberCore:
    return MemberCore(None, KEYS, "g", {"t": 2}, member_id="m1", settings=SETTINGS)


def test_requests_name_the_function_keys_and_arguments() -> None:
    join = join_request(KEYS, "g", "m1", None, "", "t=2", False, SETTINGS)
    assert join.name == "member" and join.keys == KEYS.group_keys("g")
    assert join.args[:6] == ["join", "m1", "", "", "t=2", "0"]
    assert join.args[6:] == SETTINGS.to_fields()
    beat = heartbeat_request(KEYS, "g", "m1", 4, {TopicPartition("t", 1), TopicPartition("t", 0)})
    assert beat.args == ["heartbeat", "m1", 4, "t:0 t:1", ""]
    assert leave_request(KEYS, "g", "m1", 4, temporary=True).args == ["leave", "m1", 4, "1"]
    assign = assign_request(KEYS, "g", 2, {"b": {TopicPartition("t", 1)}, "a": set()})
    assert assign.args == ["assign", 2, "a", "", "b", "t:1"]
    claim = fence_request("claim", KEYS, "g", TopicLayout("t", 4), 3, "m1", 17)
    assert claim.keys == [KEYS.fence(TopicLayout("t", 4), 3)] and claim.args == [
        "claim",
        "g",
        "m1",
        "17",
    ]
    assert fence_held(1) and not fence_held(b"0")


def test_the_first_member_joins_computes_the_target_and_gets_its_grants() -> None:
    member = core()
    script = Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED])
    result = drive(member.join_steps(), script)
    ops = [
        cmd[3 + len(KEYS.group_keys("g"))] if cmd[0] == "FCALL" else cmd[0] for cmd in script.sent
    ]
    assert ops == ["join", "SADD", "describe", "assign", "heartbeat"]
    assert script.sent[0][1] == function_name("member")
    assert script.sent[3][-2:] == ("m1", "t:0 t:1")  # the uniform assignor gave m1 both
    assert result.created_group  # kept from the join reply across the extra heartbeat
    assert set(result.owned) == {TopicPartition("t", 0), TopicPartition("t", 1)}
    assert result.owned[TopicPartition("t", 1)].token == 1796125189050002
    assert member.joined and member.member_epoch == 1 and member.last == result


def test_a_fenced_reply_drops_the_session_and_a_heartbeat_needs_a_join() -> None:
    member = core()
    drive(member.join_steps(), Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED]))
    with pytest.raises(FencedError, match="stale"):
        drive(member.heartbeat_steps({TopicPartition("t", 0)}), Script([FENCED]))
    assert not member.joined and member.last is None
    with pytest.raises(UnknownMemberError):
        drive(member.heartbeat_steps(), Script([]))


def test_a_rejoin_says_it_was_a_member_and_a_changed_subscription_is_sent_once() -> None:
    member = core()
    drive(member.join_steps(), Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED]))
    member.update_topics({"t": 2, "u": 1})
    script = Script([GRANTED, GRANTED])
    drive(member.heartbeat_steps(), script)
    drive(member.heartbeat_steps(), script)
    assert [cmd[-1] for cmd in script.sent] == ["t=2 u=1", ""]
    drive(member.leave_steps(), Script([[b"OK"]]))
    assert not member.joined
    rejoin = Script([GRANTED, 1])
    drive(member.join_steps(), rejoin)
    assert rejoin.sent[0][3 + len(KEYS.group_keys("g")) + 5] == "1"  # rejoin: must exist


def test_the_async_driver_runs_the_same_member_steps() -> None:
    member = core()
    script = Script([JOINED, 1, DESCRIBED, ASSIGNED, GRANTED])

    async def perform(action: Any) -> Any:
        return script(action)

    result = asyncio.run(adrive(member.join_steps(), perform))
    assert len(result.owned) == 2 and not script.replies
