"""Oracles for the assignor tests, written independently of coordinator/balance.py:
brute force over every count matrix for small groups, a textbook min-cost flow for equal
subscriptions, and a direct check of the chain condition."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping

from coordinator.assignors import member_order
from partitions._base.types import MemberSubscription, TopicPartition

Counts = dict[str, dict[str, int]]


def counts_of(result: Mapping[str, set[TopicPartition]]) -> Counts:
    out: Counts = {}
    for m, tps in result.items():
        row = out.setdefault(m, {})
        for tp in tps:
            row[tp.topic] = row.get(tp.topic, 0) + 1
    return out


def held_of(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]],
) -> Counts:
    """What each member validly holds: subscribed, existing, and a partition claimed twice
    counts for the first member in member order."""
    seen: set[TopicPartition] = set()
    out: Counts = {m: {} for m in members}
    for m in member_order(members):
        for tp in sorted(current.get(m, ())):
            if tp in seen or tp.topic not in members[m].topics:
                continue
            if not 0 <= tp.partition < partitions.get(tp.topic, 0):
                continue
            seen.add(tp)
            out[m][tp.topic] = out[m].get(tp.topic, 0) + 1
    return out


def valid_moved(
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]],
    result: Mapping[str, set[TopicPartition]],
) -> int:
    """Validly held partitions (as in :func:`held_of`) that changed owner."""
    seen: set[TopicPartition] = set()
    count = 0
    for m in member_order(members):
        for tp in sorted(current.get(m, ())):
            if tp in seen or tp.topic not in members[m].topics:
                continue
            if not 0 <= tp.partition < partitions.get(tp.topic, 0):
                continue
            seen.add(tp)
            count += tp not in result[m]
    return count


def moves(held: Counts, counts: Counts) -> int:
    """Partitions a member held validly and no longer holds (by count per topic)."""
    return sum(
        max(0, n - counts.get(m, {}).get(t, 0)) for m, row in held.items() for t, n in row.items()
    )


def classes(
    members: Mapping[str, MemberSubscription], partitions: Mapping[str, int]
) -> dict[frozenset[str], list[str]]:
    """Members by subscription, counting only topics that exist (with partitions)."""
    live = {t for t, n in partitions.items() if n > 0}
    out: dict[frozenset[str], list[str]] = {}
    for m in sorted(members):
        out.setdefault(members[m].topics & live, []).append(m)
    return out


def loads_key(counts: Counts, ids: list[str]) -> tuple[int, ...]:
    """Loads sorted from the largest: the lexicographically least is the most balanced."""
    return tuple(sorted((sum(counts.get(m, {}).values()) for m in ids), reverse=True))


def even_per_topic(
    counts: Counts, members: Mapping[str, MemberSubscription], partitions: Mapping[str, int]
) -> bool:
    for topics, ids in classes(members, partitions).items():
        for t in topics:
            got = [counts.get(m, {}).get(t, 0) for m in ids]
            if max(got) - min(got) > 1:
                return False
    return True


def class_moves(
    held: Counts,
    counts: Counts,
    members: Mapping[str, MemberSubscription],
    partitions: Mapping[str, int],
) -> int:
    """Partitions that leave the set of members (with one subscription) that held them."""
    total = 0
    for topics, ids in classes(members, partitions).items():
        for t in topics:
            had = sum(held[m].get(t, 0) for m in ids)
            has = sum(counts.get(m, {}).get(t, 0) for m in ids)
            total += max(0, had - has)
    return total


def _compositions(n: int, k: int) -> Iterator[tuple[int, ...]]:
    if k == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, k - 1):
            yield (first, *rest)


def all_counts(
    members: Mapping[str, MemberSubscription], partitions: Mapping[str, int]
) -> Iterator[Counts]:
    """Every way to split each topic's partitions over its subscribers (valid assignments,
    by count)."""
    ids = sorted(members)
    subs = {t: [m for m in ids if t in members[m].topics] for t in sorted(partitions)}
    live = [t for t in sorted(partitions) if subs[t] and partitions[t] > 0]
    for combo in itertools.product(*(_compositions(partitions[t], len(subs[t])) for t in live)):
        counts: Counts = {m: {} for m in ids}
        for t, split in zip(live, combo, strict=True):
            for m, n in zip(subs[t], split, strict=True):
                if n:
                    counts[m][t] = n
        yield counts


def within_class_min(ids: list[str], totals: dict[str, int], held: Counts) -> int:
    """Fewest moves inside one class given its totals per topic, with every topic within one
    and loads within one among its members (brute force)."""
    best: int | None = None
    topics = sorted(totals)
    splits = [
        [s for s in _compositions(totals[t], len(ids)) if max(s) - min(s) <= 1] for t in topics
    ]
    for combo in itertools.product(*splits):
        loads = [sum(split[i] for split in combo) for i in range(len(ids))]
        if max(loads, default=0) - min(loads, default=0) > 1:
            continue
        got = sum(
            max(0, held[m].get(t, 0) - split[i])
            for t, split in zip(topics, combo, strict=True)
            for i, m in enumerate(ids)
        )
        best = got if best is None else min(best, got)
    assert best is not None
    return best


def chain_free(counts: Counts, members: Mapping[str, MemberSubscription]) -> bool:
    """No member can pass a partition, directly or along a chain of members each subscribed
    to the topic it receives, to a member with two fewer partitions."""
    load = {m: sum(counts.get(m, {}).values()) for m in members}
    for start in members:
        queue, seen = deque([start]), {start}
        while queue:
            m = queue.popleft()
            for t, n in counts.get(m, {}).items():
                if n <= 0:
                    continue
                for other in members:
                    if other not in seen and t in members[other].topics:
                        if load[other] <= load[start] - 2:
                            return False
                        seen.add(other)
                        queue.append(other)
    return True


def min_moves_equal(ids: list[str], partitions: Mapping[str, int], held: Counts) -> int:
    """Fewest moves for members with equal subscriptions, loads and every topic within one.

    Each member holds ``n // k`` of a topic; the ``n % k`` extras go to distinct members, and
    every member gets ``lo`` or ``lo + 1`` extras, exactly ``s`` of them ``lo + 1``. An extra
    of a topic a member held more than the base of saves one move: a min-cost flow (source ->
    topic -> member -> sink, with a shared node for the ``s`` extra slots), solved by
    successive shortest paths (Bellman-Ford)."""
    k = len(ids)
    base = {t: n // k for t, n in partitions.items()}
    extra = {t: n % k for t, n in partitions.items() if n % k}
    lo, s = divmod(sum(extra.values()), k)
    forced = sum(max(0, held[m].get(t, 0) - base[t]) for m in ids for t in partitions)
    if not extra:
        return forced
    topics = sorted(extra)
    src, sink, bonus = 0, 1, 2
    tnode = {t: 3 + i for i, t in enumerate(topics)}
    mnode = {m: 3 + len(topics) + i for i, m in enumerate(ids)}
    edges: list[tuple[int, int, int, int]] = []
    for t in topics:
        edges.append((src, tnode[t], extra[t], 0))
        for m in ids:
            edges.append((tnode[t], mnode[m], 1, -1 if held[m].get(t, 0) > base[t] else 0))
    for m in ids:
        if lo:
            edges.append((mnode[m], sink, lo, 0))
        edges.append((mnode[m], bonus, 1, 0))
    edges.append((bonus, sink, s, 0))
    return forced + _min_cost_flow(3 + len(topics) + k, edges, src, sink, sum(extra.values()))


def _min_cost_flow(
    n: int, edges: list[tuple[int, int, int, int]], s: int, t: int, need: int
) -> int:
    graph: list[list[int]] = [[] for _ in range(n)]
    arcs: list[list[int]] = []
    for u, v, cap, cost in edges:
        graph[u].append(len(arcs))
        arcs.append([v, cap, cost])
        graph[v].append(len(arcs))
        arcs.append([u, 0, -cost])
    total = 0
    for _ in range(need):
        inf = 1 << 60
        dist, prev = [inf] * n, [-1] * n
        dist[s] = 0
        for _ in range(n):
            changed = False
            for u in range(n):
                if dist[u] == inf:
                    continue
                for a in graph[u]:
                    v, cap, cost = arcs[a]
                    if cap > 0 and dist[u] + cost < dist[v]:
                        dist[v], prev[v], changed = dist[u] + cost, a, True
            if not changed:
                break
        assert dist[t] < inf, "no feasible flow"
        v = t
        while v != s:
            a = prev[v]
            arcs[a][1] -= 1
            arcs[a ^ 1][1] += 1
            v = arcs[a ^ 1][0]
        total += dist[t]
    return total
