"""Plain data shared by the assignors, the member and the reply parser (``replies.py``): the
partition and subscription types, and the typed records of the group protocol (grants,
heartbeat results, group descriptions).

A partition travels to and from the server scripts as ``"<topic>:<partition>"``: topic
names never contain ``:`` or spaces (see :func:`partitions._base.keys.validate_name`), so lists of
them are joined with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

from partitions._base.settings import GroupSettings

GroupState = Literal["empty", "stable", "reconciling"]


class TopicPartition(NamedTuple):
    """One partition of one topic; orders by (topic, partition)."""

    topic: str
    partition: int

    def wire(self) -> str:
        """The ``topic:partition`` form the scripts use."""
        return f"{self.topic}:{self.partition}"

    @classmethod
    def parse(cls, text: str | bytes) -> TopicPartition:
        """Inverse of :meth:`wire`."""
        if isinstance(text, bytes):
            text = text.decode()
        topic, _, part = text.rpartition(":")
        return cls(topic, int(part))


@dataclass(frozen=True, slots=True)
class MemberSubscription:
    """What a member asks for: the topics it subscribes to, and its static instance id.

    Assignors order members by instance id where they have one (static members first, then
    dynamic members by member id), so a static member that restarts under a new member id
    takes the same place, like Kafka's ``group.instance.id``.
    """

    topics: frozenset[str]
    instance_id: str | None = None


def join_partitions(tps: Iterable[TopicPartition]) -> str:
    """Sorted, space-separated wire form of a set of partitions."""
    return " ".join(tp.wire() for tp in sorted(tps))


def split_partitions(text: str | bytes | None) -> set[TopicPartition]:
    """Parse a space-separated list of partitions (``None`` or empty: none)."""
    if not text:
        return set()
    if isinstance(text, bytes):
        text = text.decode()
    return {TopicPartition.parse(part) for part in text.split()}


def all_partitions(partitions: dict[str, int] | Iterable[tuple[str, int]]) -> list[TopicPartition]:
    """Every partition of the given topics, sorted."""
    items = partitions.items() if isinstance(partitions, dict) else partitions
    return sorted(TopicPartition(t, p) for t, n in items for p in range(n))


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
