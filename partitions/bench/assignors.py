"""``partstream bench coordinator``: how long an assignor takes on a large group (no server).

Every member of a group computes the target assignment itself, on its heartbeat thread, so
the assignor's time is part of a rebalance. The run builds one group (``members`` x
``partitions`` over ``topics`` topics, equal or unequal subscriptions, from ``seed``) and
times the assignor, measured in this run, on three cases:

* ``scratch``: no current assignment (a group's first target);
* ``leave``: one member leaves a group holding the scratch target;
* ``join``: one member joins it.

Beside each time it checks the result outside the timing: every partition assigned once to a
subscriber, the load range, whether it is balanced (no chain of moves from a member to one
with two fewer partitions, each move to a member subscribed to the partition's topic),
whether members with equal subscriptions hold every topic within one of each other, and how
many partitions that had an owner changed owner.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.assignors import Assignment, assign, get_assignor
from partitions._base.errors import ConfigError
from partitions._base.types import MemberSubscription, TopicPartition
from partitions.bench.env import machine
from partitions.bench.options import split

SUBSCRIPTIONS = ("equal", "unequal")


@dataclass(frozen=True, slots=True)
class AssignorBenchOptions:
    """The group to assign and how often to time each case."""

    members: int = 2000
    partitions: int = 100_000
    topics: int = 100
    # "equal": every member subscribes to every topic; "unequal": member i subscribes to a
    # random subset of the topics, of a random size from 1 to ``topics`` (drawn from seed).
    subscriptions: str = "unequal"
    assignor: str = "uniform"
    # Timed runs of each case; the figure is their median.
    repeat: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("members", "partitions", "topics", "repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bench: {name} must be a positive integer, not {value!r}")
        if self.topics > self.partitions:
            raise ConfigError("bench: need at least one partition per topic")
        if self.subscriptions not in SUBSCRIPTIONS:
            raise ConfigError(f"bench: subscriptions must be one of {', '.join(SUBSCRIPTIONS)}")
        get_assignor(self.assignor)

    def describe(self) -> str:
        sizes = sorted(set(split(self.partitions, self.topics)))
        per = " or ".join(f"{s:,}" for s in sizes)
        subs = (
            "every member subscribes to every topic"
            if self.subscriptions == "equal"
            else f"each member subscribes to a random subset of 1..{self.topics} topics "
            f"(seed {self.seed})"
        )
        return (
            f"{self.assignor} assignor, {self.members:,} members x {self.partitions:,} "
            f"partitions ({self.topics} topics of {per}), {self.subscriptions} subscriptions: "
            f"{subs}"
        )


def make_group(
    opts: AssignorBenchOptions,
) -> tuple[dict[str, MemberSubscription], dict[str, int], MemberSubscription]:
    """The group's members, its topics, and the subscription of the member that joins."""
    names = [f"t{i:04d}" for i in range(opts.topics)]
    topics = dict(zip(names, split(opts.partitions, opts.topics), strict=True))
    rng = random.Random(opts.seed)

    def draw() -> MemberSubscription:
        if opts.subscriptions == "equal":
            return MemberSubscription(frozenset(names))
        return MemberSubscription(frozenset(rng.sample(names, rng.randint(1, len(names)))))

    members = {f"m{i:05d}": draw() for i in range(opts.members)}
    return members, topics, draw()


def check(
    result: Assignment,
    members: Mapping[str, MemberSubscription],
    topics: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]],
) -> dict[str, Any]:
    """Properties of one result (see the module docstring); raises if it is not valid."""
    owner: dict[TopicPartition, str] = {}
    for member, tps in result.items():
        for tp in tps:
            if tp in owner or tp.topic not in members[member].topics:
                raise AssertionError(f"invalid assignment: {tp} to {member}")
            owner[tp] = member
    wanted = sum(n for t, n in topics.items() if any(t in s.topics for s in members.values()))
    if len(owner) != wanted:
        raise AssertionError(f"{wanted - len(owner)} partitions left unassigned")
    before = {tp: m for m, tps in current.items() for tp in tps}
    loads = [len(tps) for tps in result.values()]
    return {
        "loads": [min(loads), max(loads)],
        "balanced": chain_balanced(result, members),
        "per_topic_even": per_topic_even(result, members),
        "moved": sum(1 for tp, m in owner.items() if tp in before and before[tp] != m),
    }


def chain_balanced(result: Assignment, members: Mapping[str, MemberSubscription]) -> bool:
    """No chain of moves takes a partition from a member to one with two fewer.

    From the most loaded members, follow every partition they hold to every member
    subscribed to its topic, and on from there; if none reached has two fewer, that set is
    settled (nothing it holds can leave it) and the next most loaded rest is checked.
    """
    load = {m: len(tps) for m, tps in result.items()}
    held = {m: {tp.topic for tp in tps} for m, tps in result.items()}
    subscribers: dict[str, list[str]] = {}
    for m, sub in members.items():
        for t in sub.topics:
            subscribers.setdefault(t, []).append(m)
    remaining = set(members)
    while remaining:
        top = max(load[m] for m in remaining)
        queue = deque(m for m in remaining if load[m] == top)
        seen = set(queue)
        seen_topics: set[str] = set()
        while queue:
            m = queue.popleft()
            for t in held[m] - seen_topics:
                seen_topics.add(t)
                for other in subscribers[t]:
                    if other in remaining and other not in seen:
                        if load[other] <= top - 2:
                            return False
                        seen.add(other)
                        queue.append(other)
        remaining -= seen
    return True


def per_topic_even(result: Assignment, members: Mapping[str, MemberSubscription]) -> bool:
    """Members with equal subscriptions hold every topic within one of each other."""
    classes: dict[frozenset[str], list[str]] = {}
    for m, sub in members.items():
        classes.setdefault(sub.topics, []).append(m)
    for ids in classes.values():
        holders: dict[str, list[int]] = {}  # topic -> the counts of the members holding it
        for m in ids:
            mine: dict[str, int] = {}
            for tp in result[m]:
                mine[tp.topic] = mine.get(tp.topic, 0) + 1
            for t, n in mine.items():
                holders.setdefault(t, []).append(n)
        for counts in holders.values():
            low = min(counts) if len(counts) == len(ids) else 0
            if max(counts) - low > 1:
                return False
    return True


def run_assignor_bench(
    opts: AssignorBenchOptions, *, command: str = "", say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Time the assignor on the scratch, leave and join cases; the JSON-ready results."""
    members, topics, newcomer = make_group(opts)
    say(f"-- coordinator: {opts.describe()}")
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        group: dict[str, MemberSubscription],
        current: dict[str, set[TopicPartition]],
        detail: str,
    ) -> Assignment:
        seconds: list[float] = []
        result: Assignment = {}
        for _ in range(opts.repeat):
            t0 = time.perf_counter()
            result = assign(opts.assignor, group, topics, current)
            seconds.append(time.perf_counter() - t0)
        got = {
            "case": name,
            "detail": detail,
            "members": len(group),
            "seconds": [round(s, 3) for s in seconds],
            "median_s": round(statistics.median(seconds), 3),
            **check(result, group, topics, current),
        }
        cases.append(got)
        say(case_line(got))
        return result

    first = case("scratch", members, {}, "no current assignment")
    leaver = min(members)
    rest = {m: s for m, s in members.items() if m != leaver}
    case("leave", rest, {m: first[m] for m in rest}, f"{leaver} leaves")
    joined = {**members, "m-joiner": newcomer}
    case("join", joined, dict(first), f"m-joiner ({len(newcomer.topics)} topics) joins")
    return {
        "mode": "coordinator",
        "command": command,
        "config": asdict(opts),
        "describe": opts.describe(),
        "cases": cases,
        "env": machine(),
    }


def case_line(c: dict[str, Any]) -> str:
    """``scratch: 1.234 s median of 3 (...), loads 49..51, balanced yes, ...``"""
    lo, hi = c["loads"]
    runs = "" if len(c["seconds"]) == 1 else f" median of {len(c['seconds'])}"
    return (
        f"{c['case']}: {c['median_s']:.3f} s{runs} ({c['detail']}, {c['members']} members), "
        f"loads {lo}..{hi}, balanced {'yes' if c['balanced'] else 'NO'}, "
        f"per-topic even {'yes' if c['per_topic_even'] else 'NO'}, moved {c['moved']:,}"
    )


def env_line(result: dict[str, Any]) -> str:
    env = result["env"]
    return (
        f"env: {env['cpu_count']} CPUs, load {env['load_avg_1m']}, Python {env['python']}, "
        f"commit {env['git_commit']}, {env['time_utc']}"
    )
