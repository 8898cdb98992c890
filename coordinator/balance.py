"""The uniform assignor's arithmetic: how many partitions of each topic each member gets.

Plain integers only (no names, no partitions): :func:`balanced_counts` takes the members in
their canonical order, grouped into *classes* of equal subscriptions (the same topics among
those that exist), the topics' partition counts and what each member validly holds now, and
returns a count per (member, topic). Which partitions those are is
:mod:`coordinator.assignors`' business.

The counts satisfy, in this order of priority:

1. **Balance.** No chain of moves can take a partition from a member to one with at least
   two fewer, each move going to a member subscribed to that partition's topic. This is the
   strongest balance there is: the sorted member loads are the least majorized possible, so
   the most loaded member is as light, the least loaded as heavy and the spread as small as
   the subscriptions allow (a flow argument, checked against brute force in the tests).
2. **Per-topic spread.** Members of one class hold every topic within one of each other.
3. **Stickiness, between classes.** Among all class totals per topic that satisfy 1, the
   fewest partitions leave the class that holds them.
4. **Stickiness, within a class.** Given its totals per topic, a class keeps the most
   partitions with the members that hold them that 1 and 2 allow.

For one class (equal subscriptions) and for classes of one member each, 3 and 4 together are
the fewest moves overall. Between classes, the tie-breaks spread each topic towards the
members holding the least of it, without a guarantee.

Method: the class totals start from what is held, with the free partitions water-filled onto
the least loaded classes. Shortest augmenting chains (blocking flows, in bulk) then remove
every load gap of two: first passing on only partitions nobody held, then any. The
shortest negative cycles (a class takes back what it lost) are undone directly, and a
Bellman-Ford pass cancels whatever negative cycle of the residual graph is left, with a
move costing one and load-neutral exchanges free; it ends on a feasible potential, the
optimality certificate of a min-cost flow. Inside each class, the topics' remainders
("extras") are a bipartite b-matching (:mod:`coordinator.spread`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from coordinator.spread import pred_cycles, spread_extras

Counts = list[dict[int, int]]


def balanced_counts(
    class_sizes: Sequence[int],
    class_topics: Sequence[Sequence[int]],
    topic_counts: Sequence[int],
    held: Sequence[Sequence[dict[int, int]]],
) -> list[Counts]:
    """Per class, per member (in class order): topic index -> partitions to hold.

    ``class_topics[c]`` are the topics class ``c`` subscribes to (each topic with at least one
    subscriber, sorted); ``held[c][i]`` what member ``i`` of class ``c`` validly holds now
    (topic -> count, only subscribed topics, never more than a topic has in total).
    """
    totals = _ClassFlow(class_sizes, class_topics, topic_counts, held)
    totals.fill()
    totals.level(free_only=True)
    totals.level(free_only=False)
    totals.shortcuts()
    totals.unmove()
    out: list[Counts] = []
    for c, size in enumerate(class_sizes):
        n = totals.n[c]
        if size == 1:
            out.append([{t: v for t, v in n.items() if v}])
            continue
        base = {t: v // size for t, v in n.items() if v >= size}
        extra = {t: v % size for t, v in n.items() if v % size}
        good = [{t for t, v in h.items() if t in extra and v > base.get(t, 0)} for h in held[c]]
        picks = spread_extras(size, extra, good)
        members = []
        for mine in picks:
            counts = dict(base)
            for t in mine:
                counts[t] = counts.get(t, 0) + 1
            members.append(counts)
        out.append(members)
    return out


class _ClassFlow:
    """Partitions of each topic per class, and the three passes that balance them."""

    def __init__(
        self,
        sizes: Sequence[int],
        topics: Sequence[Sequence[int]],
        counts: Sequence[int],
        held: Sequence[Sequence[dict[int, int]]],
    ) -> None:
        self.k = list(sizes)
        self.topics = [list(ts) for ts in topics]
        self.counts = list(counts)
        self.classes_of: list[list[int]] = [[] for _ in counts]
        for c, ts in enumerate(self.topics):
            for t in ts:
                self.classes_of[t].append(c)
        self.held: list[dict[int, int]] = []
        for members in held:
            mine: dict[int, int] = {}
            for h in members:
                for t, v in h.items():
                    mine[t] = mine.get(t, 0) + v
            self.held.append(mine)
        self.n = [dict(h) for h in self.held]
        self.load = [sum(h.values()) for h in self.held]

    def top(self, c: int) -> int:
        """The load of the class's most loaded member (members differ by at most one)."""
        return -(-self.load[c] // self.k[c])

    def bottom(self, c: int) -> int:
        return self.load[c] // self.k[c]

    # -- 1. free partitions onto the least loaded ---------------------------------------
    def fill(self) -> None:
        taken = [0] * len(self.counts)
        for n in self.n:
            for t, v in n.items():
                taken[t] += v
        members = [sum(self.k[c] for c in cs) for cs in self.classes_of]
        for t in sorted(range(len(self.counts)), key=lambda t: (members[t], t)):
            free = self.counts[t] - taken[t]
            if free > 0 and self.classes_of[t]:
                self._water_fill(t, free)

    def _water_fill(self, t: int, free: int) -> None:
        cs = self.classes_of[t]
        k, load, n = self.k, self.load, self.n
        if len(cs) == 1:
            c = cs[0]
            n[c][t] = n[c].get(t, 0) + free
            load[c] += free
            return

        def need(level: int) -> int:
            return sum(max(0, k[c] * level - load[c]) for c in cs)

        lo = min(self.bottom(c) for c in cs)
        hi = lo + free
        while lo < hi:  # the highest bottom level every class can be raised to
            mid = (lo + hi + 1) // 2
            if need(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        for c in cs:
            add = max(0, k[c] * lo - load[c])
            if add:
                n[c][t] = n[c].get(t, 0) + add
                load[c] += add
                free -= add
        # The rest one at a time: lowest member first, then the class holding least of t.
        heap = [(self.bottom(c), n[c].get(t, 0) / k[c], c) for c in cs]
        heapq.heapify(heap)
        while free:
            _, _, c = heapq.heappop(heap)
            n[c][t] = n[c].get(t, 0) + 1
            load[c] += 1
            free -= 1
            heapq.heappush(heap, (self.bottom(c), n[c][t] / k[c], c))

    # -- 2. no load gap of two ------------------------------------------------------------
    def level(self, *, free_only: bool) -> None:
        """Shortest chains from the most loaded classes to any two below, in bulk (Dinic).

        When the most loaded reach no such class, the classes they reach are settled: nothing
        they hold can leave them and their loads are within one, so they are set aside.
        With ``free_only``, chains only pass on partitions a class did not hold before (a
        first pass that moves nothing anybody held; what it leaves, the full pass does).
        """
        settled = [False] * len(self.k)
        while True:
            live = [c for c in range(len(self.k)) if not settled[c]]
            if not live:
                return
            high = max(self.top(c) for c in live)
            if min(self.bottom(c) for c in live) > high - 2:
                return
            sources = [c for c in live if self.top(c) == high]
            depth, sinks = self._layers(sources, high, settled, free_only)
            if not sinks:
                for c in depth:
                    if c >= 0:
                        settled[c] = True
                continue
            self._block(high, depth, free_only)

    def _spare(self, c: int, t: int, free_only: bool) -> int:
        """How many of topic t class c can pass on (in the free-only pass: beyond its own)."""
        v = self.n[c].get(t, 0)
        return v - self.held[c].get(t, 0) if free_only else v

    def _layers(
        self, sources: list[int], high: int, settled: list[bool], free_only: bool
    ) -> tuple[dict[int, int], list[int]]:
        """BFS depths (classes as c >= 0, topics as -1 - t) up to the nearest sinks."""
        depth: dict[int, int] = {c: 0 for c in sources}
        queue = deque(sources)
        sinks: list[int] = []
        limit = -1
        while queue:
            c = queue.popleft()
            d = depth[c]
            if limit >= 0 and d >= limit:
                break
            for t in self.n[c]:
                key = -1 - t
                if key in depth or self._spare(c, t, free_only) <= 0:
                    continue
                depth[key] = d + 1
                for c2 in self.classes_of[t]:
                    if settled[c2] or c2 in depth:
                        continue
                    depth[c2] = d + 2
                    if self.bottom(c2) <= high - 2:
                        sinks.append(c2)
                        limit = d + 2
                    else:
                        queue.append(c2)
        return depth, sinks

    def _block(self, high: int, depth: dict[int, int], free_only: bool) -> None:
        """Push flow along the BFS layers until no source reaches a sink (a blocking flow),
        searching back from the sinks: a sink takes the topic it holds least of per member
        first (so a class's members keep what they hold when it is split evenly among
        them); a class passes on what it did not hold first (no move)."""
        n, k, load, held = self.n, self.k, self.load, self.held
        back: dict[int, list[int]] = {}  # node -> its predecessors in the layers
        for node, d in depth.items():
            if d == 0:
                continue
            if node >= 0:
                back[node] = [t for t in self.topics[node] if depth.get(-1 - t) == d - 1]
            else:
                t = -1 - node
                givers = [c for c in self.classes_of[t] if depth.get(c) == d - 1]
                # Stable: the classes passing on what they did not hold come first.
                back[node] = [c for c in givers if n[c].get(t, 0) > held[c].get(t, 0)]
                back[node] += [c for c in givers if n[c].get(t, 0) <= held[c].get(t, 0)]
        dead: set[tuple[int, int]] = set()  # arcs that lead to no source any more
        pos: dict[int, int] = {}
        limit = max(depth.values())
        sinks = [c for c, d in depth.items() if c >= 0 and d == limit]
        for sink in sinks:
            while self.bottom(sink) <= high - 2:
                topics = [t for t in back[sink] if (sink, t) not in dead]
                if not topics:
                    break
                first = min(
                    topics,
                    key=lambda t: (
                        n[sink].get(t, 0) >= held[sink].get(t, 0),  # a held one back first
                        n[sink].get(t, 0) / k[sink],
                        t,
                    ),
                )
                path = self._back_path(sink, -1 - first, back, pos, high, free_only)
                if path is None:
                    dead.add((sink, first))
                    continue
                src = path[-1]
                amount = min(load[src] - k[src] * (high - 1), k[sink] * (high - 1) - load[sink])
                for a in range(1, len(path) - 1, 2):
                    amount = min(amount, self._spare(path[a + 1], -1 - path[a], free_only))
                for a in range(1, len(path) - 1, 2):
                    t, c_from, c_to = -1 - path[a], path[a + 1], path[a - 1]
                    n[c_from][t] -= amount
                    n[c_to][t] = n[c_to].get(t, 0) + amount
                load[src] -= amount
                load[sink] += amount

    def _back_path(
        self,
        sink: int,
        topic_node: int,
        back: dict[int, list[int]],
        pos: dict[int, int],
        high: int,
        free_only: bool,
    ) -> list[int] | None:
        """From ``sink`` through ``topic_node``, back along the layers to a source with load
        to give: the path sink, topic, class, topic, ..., source; None if there is none."""
        path = [sink, topic_node]
        while len(path) > 1:
            node = path[-1]
            if node >= 0 and node not in back:  # depth 0: a source
                if self.top(node) == high:
                    return path
                path.pop()
                pos[path[-1]] = pos.get(path[-1], 0) + 1
                continue
            preds = back.get(node, [])
            i = pos.get(node, 0)
            while i < len(preds):
                prev = preds[i]
                if node < 0 and self._spare(prev, -1 - node, free_only) <= 0:
                    i += 1
                    continue
                break
            pos[node] = i
            if i == len(preds):
                path.pop()
                if len(path) > 1:
                    pos[path[-1]] = pos.get(path[-1], 0) + 1
                continue
            prev = preds[i]
            path.append(-1 - prev if node >= 0 else prev)
        return None

    # -- 3. fewest partitions leaving their class ------------------------------------------
    def shortcuts(self) -> None:
        """Undo moves by the two shortest negative cycles, directly (what :meth:`unmove`
        would find, much faster): a class that lost some of topic t takes one back from a
        class holding more of t than before, either shifting one unit of load (when that
        only swaps a member's L + 1 for another's L) or in exchange for a topic the second
        class takes at no cost."""
        n, held = self.n, self.held
        subscribed = [set(ts) for ts in self.topics]
        # Per topic, the classes holding more of it than they held (insertion-ordered), and
        # per class, the topics it holds more of, and those it holds less of.
        extra: list[dict[int, None]] = [{} for _ in self.counts]
        more: list[dict[int, None]] = [{} for _ in self.k]
        less: list[dict[int, None]] = [{} for _ in self.k]

        def note(c: int, t: int) -> None:
            v, h = n[c].get(t, 0), held[c].get(t, 0)
            for table, key, value, on in (
                (extra[t], c, None, v > h),
                (more[c], t, None, v > h),
                (less[c], t, None, v < h),
            ):
                if on:
                    table[key] = value
                else:
                    table.pop(key, None)

        for c, row in enumerate(n):
            for t in sorted({*row, *held[c]}):
                note(c, t)

        def give(c: int, t: int, d: int) -> None:
            n[c][t] -= 1
            n[d][t] = n[d].get(t, 0) + 1
            note(c, t)
            note(d, t)

        found = True
        while found:
            found = False
            for c in range(len(self.k)):
                for t in list(less[c]):
                    for d in list(extra[t]):
                        if t not in less[c]:
                            break
                        if d == c or d not in extra[t]:
                            continue
                        if self.top(d) == self.bottom(c) + 1:
                            give(d, t, c)
                            self.load[d] -= 1
                            self.load[c] += 1
                            found = True
                            continue
                        back = next((u for u in more[c] if u != t and u in subscribed[d]), -1)
                        if back < 0:
                            back = next((u for u in less[d] if u != t and n[c].get(u, 0) > 0), -1)
                        if back >= 0:
                            give(d, t, c)
                            give(c, back, d)
                            found = True

    def unmove(self) -> None:
        """Cancel negative cycles: a unit leaving a class that held it costs 1, returning one
        saves 1, and a class may pass one unit of load to another when that only swaps a
        member's load L+1 for a member's L elsewhere (free). Bellman-Ford (queue-based) with
        labels kept across cancellations; the pass ends with a feasible potential, i.e. no
        negative cycle is left."""
        nc, nt = len(self.k), len(self.counts)
        n, held = self.n, self.held
        levels = max((self.top(c) for c in range(nc)), default=0) + 2
        z0 = nc + nt
        size = z0 + levels
        dist = [0] * size
        pred = [-1] * size
        queue = deque(range(size))
        queued = [True] * size
        work = 0

        def by_level() -> list[list[int]]:
            out: list[list[int]] = [[] for _ in range(levels)]
            for c in range(nc):
                if self.load[c]:
                    out[self.top(c) - 1].append(c)
            return out

        givers = by_level()
        while queue:
            u = queue.popleft()
            queued[u] = False
            du = dist[u]
            relaxed: list[tuple[int, int]] = []
            if u < nc:
                nu, hu = n[u], held[u]
                for t, v in nu.items():
                    if v > 0:
                        relaxed.append((nc + t, du + (1 if v <= hu.get(t, 0) else 0)))
                relaxed.append((z0 + self.bottom(u), du))
            elif u < z0:
                t = u - nc
                for c in self.classes_of[t]:
                    relaxed.append((c, du - (1 if n[c].get(t, 0) < held[c].get(t, 0) else 0)))
            else:
                relaxed.extend((c, du) for c in givers[u - z0])
            for v, dv in relaxed:
                if dv < dist[v]:
                    dist[v] = dv
                    pred[v] = u
                    if not queued[v]:
                        queued[v] = True
                        queue.append(v)
            # Look for a cycle once the relaxations since the last look cost about as much
            # as looking (a topic relaxes every subscribing class).
            work += len(relaxed)
            if work < size:
                continue
            work = 0
            cycles = pred_cycles(pred)
            if not cycles:
                continue
            pairs: set[tuple[int, int]] = set()
            for cycle in cycles:
                pairs.update(self._cancel(cycle))
            changed = {c for c, _ in pairs}
            givers = by_level()
            # Forget the predecessor arcs whose cost or existence changed (the others still
            # satisfy d[v] >= d[u] + w, so a predecessor cycle stays a negative one).
            for v in range(size):
                u = pred[v]
                if u < 0:
                    continue
                if u < nc:
                    stale = v >= z0 or (u, v - nc) in pairs
                elif u < z0:
                    stale = (v, u - nc) in pairs
                else:
                    stale = v in changed
                if stale:
                    pred[v] = -1
            for v in [*changed, *(nc + t for _, t in pairs), *range(z0, size)]:
                if not queued[v]:
                    queued[v] = True
                    queue.append(v)
        if pred_cycles(pred):  # pragma: no cover - a queue that empties leaves none
            raise AssertionError("negative cycle left in the class flow")

    def _cancel(self, cycle: list[int]) -> list[tuple[int, int]]:
        """Move one unit around ``cycle``; the (class, topic) pairs it changed."""
        nc, nt = len(self.k), len(self.counts)
        n = self.n
        pairs: list[tuple[int, int]] = []
        for i, u in enumerate(cycle):
            v = cycle[(i + 1) % len(cycle)]
            if u < nc and nc <= v < nc + nt:  # class u passes on one of topic v
                n[u][v - nc] -= 1
                self.load[u] -= 1
                pairs.append((u, v - nc))
            elif nc <= u < nc + nt and v < nc:  # class v takes one of topic u
                n[v][u - nc] = n[v].get(u - nc, 0) + 1
                self.load[v] += 1
                pairs.append((v, u - nc))
        return pairs
