"""Typed records of the coordinator, and the one place that parses the scripts' replies.

redis-py hands back nested lists of bytes and ints; everything else in coordinator/ sees only
the frozen dataclasses below. Script error statuses become the error tree's types here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from coordinator.settings import GroupSettings
from partitions._base.errors import (
    DuplicateInstanceError,
    FencedError,
    MembershipError,
    PartstreamError,
    StateLostError,
    UnknownGroupError,
    UnknownMemberError,
)
from partitions._base.types import TopicPartition, split_partitions

GroupState = Literal["empty", "stable", "reconciling"]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True, slots=True)
class Grant:
    """One owned partition: the grant token to fence with and the member epoch it came at."""

    token: int
    epoch: int


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What the coordinator told a member on join or heartbeat (its full current state)."""

    member_id: str
    member_epoch: int
    group_epoch: int
    target_epoch: int
    settings: GroupSettings
    owned: dict[TopicPartition, Grant]
    to_revoke: frozenset[TopicPartition]
    pending: frozenset[TopicPartition]
    created_group: bool = False

    @property
    def target_stale(self) -> bool:
        """The target assignment predates the group epoch: someone must compute a new one."""
        return self.target_epoch < self.group_epoch

    @property
    def reconciling(self) -> bool:
        """Partitions still have to move to or from this member (or the target is stale)."""
        return self.target_stale or bool(self.to_revoke) or bool(self.pending)

    @property
    def heartbeat_interval_ms(self) -> int:
        return self.settings.heartbeat_interval_ms

    @property
    def session_timeout_ms(self) -> int:
        return self.settings.session_timeout_ms

    @property
    def max_deliveries(self) -> int:
        return self.settings.max_deliveries

    @property
    def reclaim_idle_ms(self) -> int:
        return self.settings.reclaim_idle_ms


@dataclass(frozen=True, slots=True)
class PartitionOwner:
    """The current owner of one partition in a group, with its grant."""

    topic: str
    partition: int
    owner: str
    token: int
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """One member as the coordinator sees it."""

    member_id: str
    instance_id: str | None
    client: str
    topics: tuple[str, ...]
    member_epoch: int
    seconds_since_heartbeat: float
    left: bool  # a static member that left temporarily; its partitions stay reserved
    owned: tuple[TopicPartition, ...]
    target: tuple[TopicPartition, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owned"] = [list(tp) for tp in self.owned]
        d["target"] = [list(tp) for tp in self.target]
        d["partitions"] = d["owned"]
        d["topics"] = list(self.topics)
        return d


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A snapshot of a group: settings, epochs, members, owners (one atomic read)."""

    group: str
    state: GroupState
    epoch: int
    target_epoch: int
    settings: GroupSettings
    topics: dict[str, int]
    members: tuple[MemberDescription, ...]
    partitions: tuple[PartitionOwner, ...]
    server_time_ms: int = 0

    @property
    def assignor(self) -> str:
        return self.settings.assignor

    def owners(self) -> dict[TopicPartition, str]:
        """Partition -> owning member id."""
        return {TopicPartition(p.topic, p.partition): p.owner for p in self.partitions}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: group, state, epoch, assignor, members [...], partitions [...]."""
        return {
            "group": self.group,
            "state": self.state,
            "epoch": self.epoch,
            "target_epoch": self.target_epoch,
            "assignor": self.assignor,
            "settings": self.settings.to_dict(),
            "topics": dict(self.topics),
            "members": [m.to_dict() for m in self.members],
            "partitions": [p.to_dict() for p in self.partitions],
        }


_ERRORS: dict[str, type[PartstreamError]] = {
    "FENCED": FencedError,
    "UNKNOWN_MEMBER": UnknownMemberError,
    "DUPLICATE_INSTANCE": DuplicateInstanceError,
    "UNKNOWN_GROUP": UnknownGroupError,
    "STATE_LOST": StateLostError,
}


def raise_for_status(reply: list[Any], group: str) -> None:
    """Raise the typed error an ``{"ERR", code, message}`` reply stands for."""
    if reply and _s(reply[0]) == "ERR":
        code, message = _s(reply[1]), _s(reply[2])
        raise _ERRORS.get(code, MembershipError)(f"group {group!r}: {message}")


def parse_member_reply(reply: list[Any], group: str) -> HeartbeatResult:
    """Parse member.lua's join/heartbeat reply."""
    raise_for_status(reply, group)
    _, member_id, member_epoch, group_epoch, target_epoch, cfg, flat, revoke, pending, created = (
        reply
    )
    owned = {
        TopicPartition.parse(flat[i]): Grant(int(flat[i + 1]), int(flat[i + 2]))
        for i in range(0, len(flat), 3)
    }
    return HeartbeatResult(
        member_id=_s(member_id),
        member_epoch=int(member_epoch),
        group_epoch=int(group_epoch),
        target_epoch=int(target_epoch),
        settings=GroupSettings.from_fields(_pairs(cfg)),
        owned=owned,
        to_revoke=frozenset(TopicPartition.parse(tp) for tp in revoke),
        pending=frozenset(TopicPartition.parse(tp) for tp in pending),
        created_group=bool(int(created)),
    )


def parse_describe(reply: list[Any], group: str) -> GroupDescription:
    """Parse admin.lua's describe reply into a GroupDescription."""
    raise_for_status(reply, group)
    _, now, cfg, state_flat, members_flat, owners_flat = reply
    now = int(now)
    state = _pairs(state_flat)
    topics = {k[6:]: int(v) for k, v in state.items() if k.startswith("topic:")}
    owners: list[PartitionOwner] = []
    owners_by_member: dict[str, list[TopicPartition]] = {}
    for tp_raw, value in _pairs(owners_flat).items():
        tp = TopicPartition.parse(tp_raw)
        owner, token, grant_epoch = value.split()
        owners.append(PartitionOwner(tp.topic, tp.partition, owner, int(token), int(grant_epoch)))
        owners_by_member.setdefault(owner, []).append(tp)
    members: list[MemberDescription] = []
    for i in range(0, len(members_flat), 4):
        member_id = _s(members_flat[i])
        rec = json.loads(members_flat[i + 1])
        last_hb = float(members_flat[i + 2])
        members.append(
            MemberDescription(
                member_id=member_id,
                instance_id=rec.get("i") or None,
                client=rec.get("c") or "",
                topics=tuple(str(rec.get("t") or "").split()),
                member_epoch=int(rec.get("e", 0)),
                seconds_since_heartbeat=max(0.0, (now - last_hb) / 1000),
                left=rec.get("l") == 1,
                owned=tuple(sorted(owners_by_member.get(member_id, ()))),
                target=tuple(sorted(split_partitions(members_flat[i + 3]))),
            )
        )
    members.sort(key=lambda m: m.member_id)
    epoch, target_epoch = int(state.get("epoch", 0)), int(state.get("target_epoch", 0))
    return GroupDescription(
        group=group,
        state=_group_state(epoch, target_epoch, members),
        epoch=epoch,
        target_epoch=target_epoch,
        settings=GroupSettings.from_fields(_pairs(cfg)),
        topics=topics,
        members=tuple(members),
        partitions=tuple(sorted(owners, key=lambda p: (p.topic, p.partition))),
        server_time_ms=now,
    )


def _group_state(epoch: int, target_epoch: int, members: list[MemberDescription]) -> GroupState:
    if not members:
        return "empty"
    if target_epoch != epoch:
        return "reconciling"
    for m in members:
        if m.member_epoch != target_epoch or set(m.owned) != set(m.target):
            return "reconciling"
    return "stable"
