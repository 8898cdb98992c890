"""Within one class of equal subscriptions: which members get a topic's remainder.

A class of ``k`` members given ``n`` partitions of a topic holds ``n // k`` each, and
``n % k`` of them one more (the topic's *extras*). Every member must end with the same number
of extras, within one: ``lo`` or ``lo + 1`` where ``lo, s = divmod(total extras, k)`` and
exactly ``s`` members have ``lo + 1``. A member that already holds more than the base of a
topic (``good``) keeps one partition more where it gets that topic's extra, so
:func:`spread_extras` picks extras to maximise the good ones: a maximum-weight bipartite
b-matching (topics x members, 0/1 weights, degrees fixed), exactly.

A greedy start keeps every good extra and drops the fewest the limits force; the extras
left go out by Havel-Hakimi, then by augmenting chains. If that falls short of an upper
bound, negative cycles of the residual graph are cancelled until none is left (the
optimality certificate). The residual graph is dense (a member can take the extra of any
topic it lacks), so a member's label comes from scanning the topics in label order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from itertools import pairwise

BONUS = 1 << 62  # the bonus node of the completion flow (topics are >= 0, members < 0)


def spread_extras(size: int, extra: Mapping[int, int], good: list[set[int]]) -> list[set[int]]:
    """Per member (class order), the topics whose extra it gets.

    ``extra[t]`` is the number of extras of topic ``t`` (``0 < extra[t] < size``);
    ``good[i]`` the topics whose extra member ``i`` would keep from what it holds.
    """
    if not extra:
        return [set() for _ in range(size)]
    return _Extras(size, extra, good).solve()


class _Extras:
    def __init__(self, size: int, extra: Mapping[int, int], good: list[set[int]]) -> None:
        self.k = size
        self.topics = sorted(extra)
        self.extra = dict(extra)
        self.slots = dict(extra)  # extras not given yet
        self.good = good
        total = sum(extra.values())
        self.lo, self.bonus = divmod(total, size)
        self.picks: list[set[int]] = [set() for _ in range(size)]
        # Members holding each topic's extra (dicts: insertion-ordered, so deterministic).
        self.holders: dict[int, dict[int, None]] = {t: {} for t in self.topics}
        # The bonus goes to the members with the most good topics.
        ranked = sorted(range(size), key=lambda m: (-len(good[m]), m))
        self.want = [self.lo] * size
        for m in ranked[: self.bonus]:
            self.want[m] += 1

    def solve(self) -> list[set[int]]:
        self._greedy()
        self._complete()
        if self._value() < self._bound():
            self._optimise()
        return self.picks

    def _take(self, m: int, t: int) -> None:
        self.picks[m].add(t)
        self.holders[t][m] = None
        self.slots[t] -= 1

    def _value(self) -> int:
        return sum(len(p & g) for p, g in zip(self.picks, self.good, strict=True))

    def _bound(self) -> int:
        by_member = sum(min(self.lo, len(g)) for g in self.good)
        by_member += min(self.bonus, sum(1 for g in self.good if len(g) > self.lo))
        wanted: dict[int, int] = {}
        for g in self.good:
            for t in g:
                wanted[t] = wanted.get(t, 0) + 1
        by_topic = sum(min(r, wanted.get(t, 0)) for t, r in self.extra.items())
        return min(by_member, by_topic)

    def _greedy(self) -> None:
        """Start from keeping every good extra (the most any solution keeps), then drop the
        fewest that the limits force, where they relieve a topic with too many holders:
        members with no good topic (newcomers) first reserve the topics with the most room,
        a member may keep at most ``lo + 1`` and only ``s`` members may keep ``lo + 1``."""
        lo = self.lo
        if not any(self.good):
            return
        for m, g in enumerate(self.good):
            for t in sorted(g):
                self._take(m, t)
        over = {t: -self.slots[t] for t in self.topics}  # holders beyond the topic's extras
        for m in range(self.k):
            if not self.good[m]:
                free = (t for t in self.topics if t not in self.picks[m])
                for t in heapq.nsmallest(lo, free, key=lambda t: (over[t], t)):
                    self._take(m, t)
                    over[t] += 1

        def drop(m: int, t: int) -> None:
            self.picks[m].discard(t)
            self.holders[t].pop(m, None)
            self.slots[t] += 1
            over[t] -= 1

        def worst(m: int) -> int:  # the topic of m whose holders are most in excess
            return min(self.picks[m], key=lambda t: (-over[t], t))

        for m in range(self.k):
            while len(self.picks[m]) > lo + 1:
                drop(m, worst(m))
        at_top = [m for m in range(self.k) if len(self.picks[m]) > lo]
        excess = len(at_top) - self.bonus
        for t in sorted(self.topics, key=lambda t: (-over[t], t)):
            for m in list(self.holders[t]):
                if over[t] <= 0 or excess <= 0:
                    break
                if len(self.picks[m]) > lo:
                    drop(m, t)
                    excess -= 1
        for m in at_top:
            if excess <= 0:
                break
            if len(self.picks[m]) > lo:
                drop(m, worst(m))
                excess -= 1
        for t in sorted(self.topics, key=lambda t: (-over[t], t)):
            if over[t] > 0:
                ranked = sorted(self.holders[t], key=lambda m: (-len(self.picks[m]), m))
                for m in ranked[: over[t]]:
                    drop(m, t)
        # Whoever is at lo + 1 keeps the bonus; the rest go to the most good topics.
        top = sum(1 for p in self.picks if len(p) > lo)
        rest = sorted(
            (m for m in range(self.k) if len(self.picks[m]) <= lo),
            key=lambda m: (-len(self.good[m]), m),
        )
        self.want = [lo + 1 if len(p) > lo else lo for p in self.picks]
        for m in rest[: self.bonus - top]:
            self.want[m] = lo + 1

    def _complete(self) -> None:
        """The remaining extras, topics with the most left first, each to the members with
        the most still to get that lack it (bipartite Havel-Hakimi: exact when no member
        holds anything yet); the extras still left go through augmenting chains."""
        need = [w - len(p) for w, p in zip(self.want, self.picks, strict=True)]
        buckets: list[deque[int]] = [deque() for _ in range(max(need, default=0) + 1)]
        for m in range(self.k):
            if need[m] > 0:
                buckets[need[m]].append(m)
        top = len(buckets) - 1
        for t in sorted(self.topics, key=lambda t: (-self.slots[t], t)):
            chosen: list[int] = []
            while top > 0 and not buckets[top]:
                top -= 1
            for level in range(top, 0, -1):
                bucket, passed = buckets[level], list[int]()
                while bucket and len(chosen) < self.slots[t]:
                    m = bucket.popleft()
                    (passed if t in self.picks[m] else chosen).append(m)
                bucket.extendleft(reversed(passed))
                if len(chosen) == self.slots[t]:
                    break
            for m in chosen:
                self._take(m, t)
                need[m] -= 1
                if need[m] > 0:
                    buckets[need[m]].append(m)
        if any(self.slots.values()):
            self._flow(keep_good=True)
        if any(self.slots.values()):
            self._flow(keep_good=False)
        if any(self.slots.values()):  # pragma: no cover - Gale-Ryser: a chain always exists
            raise AssertionError("extras left that no chain can give out")
        self.want = [len(p) for p in self.picks]

    def _flow(self, *, keep_good: bool) -> None:
        """Give out the extras left along augmenting chains, many per pass (Dinic): a member
        takes a free topic and drops one it has for another member to take, and so on,
        until a member with room takes one (room: below ``lo``, or at ``lo`` while a bonus
        is left; a member at ``lo`` can also take over the bonus of one at ``lo + 1``,
        which then drops a topic). With ``keep_good`` no member drops a topic it would keep.
        Without, chains exist until every extra is out: by Gale-Ryser, these degrees are a
        bipartite graph's.

        Nodes: topic ``t`` is ``t``, member ``m`` is ``-1 - m``, the bonus is ``BONUS``."""
        lo, picks = self.lo, self.picks
        while any(self.slots.values()):
            bonus_left = self.bonus - sum(1 for p in picks if len(p) > lo)
            level: dict[int, int] = {}
            queue: deque[int] = deque()
            for t in self.topics:
                if self.slots[t] > 0:
                    level[t] = 0
                    queue.append(t)
            limit = -1
            while queue:
                u = queue.popleft()
                d = level[u]
                if 0 <= limit <= d:
                    break
                for v in self._arcs(u, keep_good):
                    if v in level:
                        continue
                    level[v] = d + 1
                    if v < 0 and self._room(-1 - v, bonus_left):
                        limit = d + 1
                    else:
                        queue.append(v)
            if limit < 0:
                return
            pos: dict[int, int] = {}
            out: dict[int, list[int]] = {}
            for start in self.topics:
                while self.slots[start] > 0 and level.get(start) == 0:
                    path = self._path(start, level, pos, out, keep_good, bonus_left)
                    if path is None:
                        break
                    bonus_left -= self._push(path)

    def _room(self, m: int, bonus_left: int) -> bool:
        n = len(self.picks[m])
        return n < self.lo or (n == self.lo and bonus_left > 0)

    def _arcs(self, u: int, keep_good: bool) -> list[int]:
        lo = self.lo
        if u == BONUS:  # members at lo + 1 may hand the bonus over, then drop a topic
            return [-1 - m for m in range(self.k) if len(self.picks[m]) > lo]
        if u >= 0:  # members lacking the topic may take it
            return [-1 - m for m in range(self.k) if u not in self.picks[m]]
        m = -1 - u
        g = self.good[m]
        arcs = [
            t
            for t in sorted(self.picks[m], key=lambda t: (t in g, t))
            if not (keep_good and t in g)
        ]
        if len(self.picks[m]) == lo:
            arcs.append(BONUS)
        return arcs

    def _path(
        self,
        start: int,
        level: dict[int, int],
        pos: dict[int, int],
        out: dict[int, list[int]],
        keep_good: bool,
        bonus_left: int,
    ) -> list[int] | None:
        """A path along the BFS layers from ``start`` to a member with room, or None."""
        path = [start]
        while path:
            u = path[-1]
            if u < 0 and len(path) > 1 and self._room(-1 - u, bonus_left):
                return path
            if u not in out:
                out[u] = [v for v in self._arcs(u, keep_good) if level.get(v) == level[u] + 1]
                pos[u] = 0
            arcs, i = out[u], pos[u]
            while i < len(arcs) and not self._usable(u, arcs[i], bonus_left):
                i += 1
            pos[u] = i
            if i == len(arcs):
                path.pop()
                if path:
                    pos[path[-1]] += 1
                continue
            path.append(arcs[i])
        return None

    def _usable(self, u: int, v: int, bonus_left: int) -> bool:
        """Whether arc u -> v still exists (takes and drops change within a pass)."""
        lo = self.lo
        if u == BONUS:
            return len(self.picks[-1 - v]) > lo
        if u >= 0:
            return u not in self.picks[-1 - v]
        mine = self.picks[-1 - u]
        if v == BONUS:
            return len(mine) == lo and bonus_left <= 0
        return v in mine

    def _push(self, path: list[int]) -> int:
        """Apply a path; returns the bonuses it used up (1 if it ends on one)."""
        self.slots[path[0]] -= 1
        for u, v in pairwise(path):
            if 0 <= u != BONUS and v < 0:  # the member takes the topic
                self.picks[-1 - v].add(u)
                self.holders[u][-1 - v] = None
            elif u < 0 and 0 <= v != BONUS:  # the member drops the topic
                self.picks[-1 - u].discard(v)
                self.holders[v].pop(-1 - u, None)
        return 1 if len(self.picks[-1 - path[-1]]) == self.lo + 1 else 0

    def _optimise(self) -> None:
        """Cancel negative cycles. Arcs: topic -> member that lacks it (takes it: -1 if good),
        member -> topic it has (drops it: +1 if good), and through a bonus node, a member at
        ``lo`` -> any member at ``lo + 1`` (the second hands its bonus to the first)."""
        k, topics = self.k, self.topics
        index = {t: k + i for i, t in enumerate(topics)}
        z = k + len(topics)
        good_sorted = [sorted(g) for g in self.good]
        dist = [0] * (z + 1)
        pred = [-1] * (z + 1)
        while True:
            changed = False
            for t in topics:
                v = index[t]
                for m in self.holders[t]:
                    d = dist[m] + (1 if t in self.good[m] else 0)
                    if d < dist[v]:
                        dist[v], pred[v], changed = d, m, True
            for m in range(k):
                if self.want[m] == self.lo and dist[m] < dist[z]:
                    dist[z], pred[z], changed = dist[m], m, True
            ranked = sorted((dist[index[t]], t) for t in topics)
            for m in range(k):
                best, arg = dist[m], -1
                if self.want[m] == self.lo + 1 and dist[z] < best:
                    best, arg = dist[z], z
                mine, g = self.picks[m], self.good[m]
                for d, t in ranked:  # the lowest topic it lacks and would not keep
                    if d >= best:
                        break
                    if t not in mine and t not in g:
                        best, arg = d, index[t]
                        break
                for t in good_sorted[m]:  # a topic it would keep is one cheaper
                    d = dist[index[t]] - 1
                    if d < best and t not in mine:
                        best, arg = d, index[t]
                if arg >= 0:
                    dist[m], pred[m], changed = best, arg, True
            cycles = pred_cycles(pred)
            for cycle in cycles:
                self._cancel(cycle, index, z)
            if cycles:
                pred = [-1] * (z + 1)
            elif not changed:
                return

    def _cancel(self, cycle: list[int], index: dict[int, int], z: int) -> None:
        topic_of = {v: t for t, v in index.items()}
        cost = 0
        for i, u in enumerate(cycle):
            v = cycle[(i + 1) % len(cycle)]
            if u in topic_of:  # v takes topic u
                t = topic_of[u]
                cost -= 1 if t in self.good[v] else 0
                self.picks[v].add(t)
                self.holders[t][v] = None
            elif v in topic_of:  # u drops topic v
                t = topic_of[v]
                cost += 1 if t in self.good[u] else 0
                self.picks[u].discard(t)
                self.holders[t].pop(u, None)
            elif v == z:  # u takes the bonus
                self.want[u] += 1
            elif u == z:  # v hands it over
                self.want[v] -= 1
        if cost >= 0:  # pragma: no cover - predecessor cycles are negative
            raise AssertionError("cancelled a cycle that was not negative")


def pred_cycles(pred: list[int]) -> list[list[int]]:
    """The cycles of the predecessor graph (``pred[v]`` is the tail of v's arc), each in arc
    order; they share no node. Bellman-Ford's predecessor cycles are negative."""
    state = [0] * len(pred)  # 0 new, 1 on the current walk, 2 done
    cycles = []
    for start in range(len(pred)):
        if state[start]:
            continue
        walk = []
        v = start
        while v >= 0 and state[v] == 0:
            state[v] = 1
            walk.append(v)
            v = pred[v]
        if v >= 0 and state[v] == 1:
            cycle = walk[walk.index(v) :]
            cycle.reverse()
            cycles.append(cycle)
        for w in walk:
            state[w] = 2
    return cycles
