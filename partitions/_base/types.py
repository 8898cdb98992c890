"""Plain data shared by the assignors, the member and the scripts' reply parser.

A partition travels to and from the server scripts as ``"<topic>:<partition>"``: topic
names never contain ``:`` or spaces (see :func:`partitions._base.keys.validate_name`), so lists of
them are joined with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


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
