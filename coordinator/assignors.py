"""Partition assignors: pure, deterministic functions over plain data (no Redis).

Each assignor maps ``members`` (member id -> subscription), ``partitions`` (topic -> count)
and ``current`` (member id -> partitions it is assigned now) to a new assignment. Every member
of the group computes the target with the same function and inputs, so the result must not
depend on the process: members, topics and partitions are always visited in a fixed order.
Members are ordered by instance id where they have one (static members, first), then by
member id, so a static member that restarts under a new member id gets the same share from
every assignor, and with the coordinator carrying its target over, nothing moves.

- ``range``: per topic, contiguous ranges in member order (Kafka's RangeAssignor).
- ``roundrobin``: all partitions dealt round-robin over the subscribed members, in order.
- ``uniform`` (default): balanced, per-topic even and sticky; see :func:`uniform_assign`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import compress
from typing import TypeAlias

from coordinator.balance import balanced_counts
from partitions._base.errors import ConfigError
from partitions._base.types import MemberSubscription, TopicPartition, all_partitions

Assignment: TypeAlias = dict[str, set[TopicPartition]]
Assignor: TypeAlias = Callable[
    [Mapping[str, MemberSubscription], Mapping[str, int], Mapping[str, set[TopicPartition]]],
    Assignment,
]


def member_order(members: Mapping[str, MemberSubscription]) -> list[str]:
    """Static members by instance id, then dynamic members by member id."""

    def key(member: str) -> tuple[int, str, str]:
        instance = members[member].instance_id
        return (0, instance, member) if instance else (1, "", member)

    return sorted(members, key=key)


def range_assign(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Kafka's range assignor: per topic, the first ``n % m`` members get one extra."""
    out: Assignment = {m: set() for m in members}
    order = member_order(members)
    for topic in sorted(partitions):
        subs = [m for m in order if topic in members[m].topics]
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
    """Deal all partitions, sorted, to the subscribed members in circular member order."""
    out: Assignment = {m: set() for m in members}
    order = member_order(members)
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


def uniform_assign(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None = None,
) -> Assignment:
    """Balanced, then even per topic, then sticky; exact, for any subscriptions.

    Guarantees, each holding whatever the current assignment (even an invalid one). Two
    members have *equal subscriptions* when they subscribe to the same topics among those in
    ``partitions`` (with at least one partition).

    1. **Valid.** Every partition of a topic somebody subscribes to goes to exactly one
       member subscribed to it; nothing else is assigned.
    2. **Balanced.** No chain of moves can take a partition from a member to one with two
       fewer (each move to a member subscribed to the partition's topic). So the sorted loads
       are the least majorized the subscriptions allow: the heaviest member is as light, the
       lightest as heavy, the spread and the sum of squares as small as any assignment makes
       them. With equal subscriptions: counts within one.
    3. **Even per topic.** Members with equal subscriptions hold every topic within one of
       each other (always possible together with 2).
    4. **Sticky.** Partitions move only as 2 and 3 require, counted on two levels: the
       partitions that leave the members of their owner's subscription are the fewest any
       assignment satisfying 2 allows; then, given what each subscription gets, the fewest
       change owner among its members that 2 and 3 allow. With equal subscriptions (one
       level), or when no two members share a subscription, this is the fewest moves of any
       assignment satisfying 1-3. With several shared subscriptions the two levels are
       solved one after the other, and brute force finds small groups where one more
       partition moves than the fewest possible. An assignment that already satisfies 1-3
       comes back unchanged.
    5. **Deterministic.** The result depends on the inputs only, never on dict or set order.

    Of a member's partitions of a topic it keeps the lowest-numbered; new ones are dealt in
    member order, lowest-numbered first. Between subscriptions, ties prefer the members
    holding the least of a topic (a preference, not a guarantee).
    """
    if not members:
        return {}
    order = member_order(members)
    subscribed = frozenset().union(*{sub.topics for sub in members.values()})
    live = sorted(t for t, n in partitions.items() if n > 0 and t in subscribed)
    tindex = {t: i for i, t in enumerate(live)}
    kept, claimed = _valid_current(order, members, {t: partitions[t] for t in live}, current)
    # Members with equal subscriptions form a class; classes in the order of their topics.
    by_subs: dict[tuple[int, ...], list[str]] = {}
    keys: dict[frozenset[str], tuple[int, ...]] = {}
    for m in order:
        topics = members[m].topics
        key = keys.get(topics)
        if key is None:
            key = keys[topics] = tuple(sorted(tindex[t] for t in topics if t in tindex))
        if key:
            by_subs.setdefault(key, []).append(m)
    classes = sorted(by_subs)
    counts = balanced_counts(
        [len(by_subs[key]) for key in classes],
        [list(key) for key in classes],
        [partitions[t] for t in live],
        [[{tindex[t]: len(ps) for t, ps in kept[m].items()} for m in by_subs[k]] for k in classes],
    )
    want: dict[str, dict[str, int]] = {}
    for key, rows in zip(classes, counts, strict=True):
        for m, row in zip(by_subs[key], rows, strict=True):
            want[m] = {live[i]: n for i, n in row.items()}
    return _materialise(order, kept, claimed, want)


def _valid_current(
    order: list[str],
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | None,
) -> tuple[dict[str, dict[str, list[TopicPartition]]], dict[str, bytearray]]:
    """What each member may keep: existing, subscribed partitions, each claimed once (the
    first member in order wins a partition claimed twice); per topic, by partition number.
    Also, per topic, which partitions are claimed."""
    kept: dict[str, dict[str, list[TopicPartition]]] = {m: {} for m in order}
    claimed = {t: bytearray(n) for t, n in partitions.items()}
    if not current:
        return kept, claimed
    for member in order:
        mine = current.get(member)
        if not mine:
            continue
        topics = members[member].topics
        out = kept[member]
        for tp in mine:
            topic, p = tp
            seen = claimed.get(topic)
            if seen is None or topic not in topics or not 0 <= p < len(seen) or seen[p]:
                continue
            seen[p] = 1
            got = out.get(topic)
            if got is None:
                out[topic] = [tp]
            else:
                got.append(tp)
        for got in out.values():
            got.sort()
        # Topics in name order: set iteration order varies from process to process.
        kept[member] = dict(sorted(out.items()))
    return kept, claimed


def _materialise(
    order: list[str],
    kept: dict[str, dict[str, list[TopicPartition]]],
    claimed: dict[str, bytearray],
    want: dict[str, dict[str, int]],
) -> Assignment:
    """Counts -> partitions: each member keeps its lowest-numbered held partitions of a
    topic up to its count; the rest of the topic is dealt in member order."""
    out: dict[str, list[TopicPartition]] = {m: [] for m in order}
    released: dict[str, list[int]] = {}
    short: list[tuple[str, str, int]] = []
    for m in order:
        counts = want.get(m, {})
        mine = kept[m]
        got = out[m]
        for topic, n in counts.items():
            held = mine.get(topic)
            if held:
                got.extend(held[:n])
                if n > len(held):
                    short.append((m, topic, n - len(held)))
            else:
                short.append((m, topic, n))
        for topic, held in mine.items():
            n = counts.get(topic, 0)
            if len(held) > n:
                released.setdefault(topic, []).extend(tp.partition for tp in held[n:])
    free: dict[str, list[int]] = {}
    pos: dict[str, int] = {}
    new = tuple.__new__
    for m, topic, n in short:
        if topic not in free:
            unclaimed = claimed[topic].translate(_FLIP)
            free[topic] = sorted(
                [*compress(range(len(unclaimed)), unclaimed), *released.get(topic, ())]
            )
            pos[topic] = 0
        start = pos[topic]
        pos[topic] = start + n
        got = out[m]
        for p in free[topic][start : start + n]:
            got.append(new(TopicPartition, (topic, p)))
    return {m: set(tps) for m, tps in out.items()}


# bytes.translate table turning claimed (1) into 0 and unclaimed (0) into 1.
_FLIP = bytes([1, 0] + [0] * 254)


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
