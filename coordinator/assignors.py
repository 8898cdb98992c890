"""Partition assignors: pure, deterministic functions over plain data (no Redis).

Each assignor maps ``members`` (member id -> subscription), ``partitions`` (topic -> count)
and ``current`` (member id -> partitions it is assigned now) to a new assignment. Every member
of the group computes the target with the same function and inputs, so the result must not
depend on the process: member ids, topics and partitions are always visited in sorted order.

- ``range``: per topic, contiguous ranges in member-id order (Kafka's RangeAssignor).
- ``roundrobin``: all partitions dealt round-robin over the subscribed members.
- ``uniform`` (default): sticky. Counts stay balanced within one for members with equal
  subscriptions, and a join or leave moves the fewest partitions that balance allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeAlias

from coordinator.errors import ConfigError
from coordinator.types import MemberSubscription, TopicPartition, all_partitions

Assignment: TypeAlias = dict[str, set[TopicPartition]]
Assignor: TypeAlias = Callable[
    [Mapping[str, MemberSubscription], Mapping[str, int], Mapping[str, set[TopicPartition]]],
    Assignment,
]


def _subscribers(members: Mapping[str, MemberSubscription], topic: str) -> list[str]:
    return sorted(m for m, sub in members.items() if topic in sub.topics)


def range_assign(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Kafka's range assignor: per topic, the first ``n % m`` members get one extra."""
    out: Assignment = {m: set() for m in members}
    for topic in sorted(partitions):
        subs = _subscribers(members, topic)
        if not subs:
            continue
        count = partitions[topic]
        per, extra = divmod(count, len(subs))
        start = 0
        for i, member in enumerate(subs):
            size = per + (1 if i < extra else 0)
            out[member].update(TopicPartition(topic, p) for p in range(start, start + size))
            start += size
    return out


def roundrobin_assign(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Deal all partitions, sorted, to the subscribed members in circular member-id order."""
    out: Assignment = {m: set() for m in members}
    order = sorted(members)
    if not order:
        return out
    cursor = 0
    for tp in all_partitions(dict(partitions)):
        for step in range(len(order)):
            member = order[(cursor + step) % len(order)]
            if tp.topic in members[member].topics:
                out[member].add(tp)
                cursor = (cursor + step + 1) % len(order)
                break
    return out


def _valid_current(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]],
) -> Assignment:
    """What each member may keep: existing, subscribed partitions, each claimed once."""
    kept: Assignment = {m: set() for m in members}
    seen: set[TopicPartition] = set()
    for member in sorted(members):
        topics = members[member].topics
        for tp in sorted(current.get(member, ())):
            if tp in seen or tp.topic not in topics:
                continue
            if not 0 <= tp.partition < partitions.get(tp.topic, 0):
                continue
            kept[member].add(tp)
            seen.add(tp)
    return kept


def _uniform_homogeneous(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    kept: Assignment,
) -> Assignment:
    topics = next(iter(members.values())).topics
    everything = [tp for tp in all_partitions(dict(partitions)) if tp.topic in topics]
    base, extra = divmod(len(everything), len(members))
    # The members holding the most keep the extra slot: that is what minimises movement.
    by_holding = sorted(members, key=lambda m: (-len(kept[m]), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_holding)}
    out: Assignment = {}
    pool: list[TopicPartition] = []
    for member in sorted(members):
        mine = sorted(kept[member])
        out[member] = set(mine[: quota[member]])
        pool.extend(mine[quota[member] :])
    taken = {tp for tps in out.values() for tp in tps} | set(pool)
    pool.extend(tp for tp in everything if tp not in taken)
    pool.sort()
    hungry = [m for m in sorted(members) if len(out[m]) < quota[m]]
    i = 0
    for tp in pool:
        # Deal round-robin among members still below quota, so topics spread evenly.
        while len(out[hungry[i % len(hungry)]]) >= quota[hungry[i % len(hungry)]]:
            i += 1
        out[hungry[i % len(hungry)]].add(tp)
        i += 1
    return out


def _uniform_heterogeneous(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    kept: Assignment,
) -> Assignment:
    out = {m: set(tps) for m, tps in kept.items()}
    owner = {tp: m for m, tps in out.items() for tp in tps}
    eligible = {
        tp: _subscribers(members, tp.topic)
        for tp in all_partitions(dict(partitions))
        if _subscribers(members, tp.topic)
    }
    # Partitions with the fewest candidates first, each to its least-loaded candidate.
    for tp in sorted(eligible, key=lambda t: (len(eligible[t]), t)):
        if tp not in owner:
            member = min(eligible[tp], key=lambda m: (len(out[m]), m))
            out[member].add(tp)
            owner[tp] = member
    # Then move single partitions from the most to the least loaded member that can take
    # them, only while that narrows a gap of two or more.
    for _ in range(len(owner) * len(members) + 1):
        moved = False
        for src in sorted(members, key=lambda m: (-len(out[m]), m)):
            for tp in sorted(out[src]):
                dst = min(eligible[tp], key=lambda m: (len(out[m]), m))
                if len(out[src]) - len(out[dst]) >= 2:
                    out[src].discard(tp)
                    out[dst].add(tp)
                    moved = True
                    break
            if moved:
                break
        if not moved:
            break
    return out


def uniform_assign(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Sticky and balanced: keep what members hold, move only what balance requires."""
    if not members:
        return {}
    kept = _valid_current(members, partitions, current or {})
    if len({sub.topics for sub in members.values()}) == 1:
        return _uniform_homogeneous(members, partitions, kept)
    return _uniform_heterogeneous(members, partitions, kept)


ASSIGNORS: dict[str, Assignor] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "uniform": uniform_assign,
}
DEFAULT_ASSIGNOR = "uniform"


def get_assignor(name: str) -> Assignor:
    """The assignor registered under ``name``; ConfigError if there is none."""
    try:
        return ASSIGNORS[name]
    except KeyError:
        known = ", ".join(sorted(ASSIGNORS))
        raise ConfigError(f"unknown assignor {name!r}; known assignors: {known}") from None


def assign(
    name: str,
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Run the assignor ``name``; every member appears in the result (maybe with no set)."""
    result = get_assignor(name)(members, partitions, current or {})
    for member in members:
        result.setdefault(member, set())
    return result
