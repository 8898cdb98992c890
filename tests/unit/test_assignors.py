"""Assignor properties: coverage, balance, per-topic spread, stickiness, static members,
determinism (no server). The uniform assignor is checked against brute force on small groups
and against an independent min-cost flow with equal subscriptions (tests/unit/
assignor_oracles.py), the properties Kafka's assignor suites assert."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coordinator.assignors import ASSIGNORS, assign, get_assignor, uniform_assign
from partitions._base.errors import ConfigError
from partitions._base.types import MemberSubscription, TopicPartition, all_partitions
from tests.unit.assignor_oracles import (
    all_counts,
    chain_free,
    class_moves,
    classes,
    counts_of,
    even_per_topic,
    held_of,
    loads_key,
    min_moves_equal,
    moves,
    valid_moved,
    within_class_min,
)

NAMES = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=6)
TOPICS = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 40), min_size=1)
MEMBER_IDS = st.sets(NAMES, min_size=1, max_size=12)


def same_subs(ids: set[str], topics: dict[str, int]) -> dict[str, MemberSubscription]:
    return {m: MemberSubscription(frozenset(topics)) for m in ids}


def owners(result: dict[str, set[TopicPartition]]) -> dict[TopicPartition, str]:
    out: dict[TopicPartition, str] = {}
    for member, tps in result.items():
        for tp in tps:
            assert tp not in out, f"{tp} assigned twice"
            out[tp] = member
    return out


def moved(before: dict[str, set[TopicPartition]], after: dict[str, set[TopicPartition]]) -> int:
    old, new = owners(before), owners(after)
    return sum(1 for tp, m in new.items() if tp in old and old[tp] != m)


@pytest.mark.parametrize("name", sorted(ASSIGNORS))
@given(ids=MEMBER_IDS, topics=TOPICS)
@settings(max_examples=60, deadline=None)
def test_every_partition_exactly_once_and_balanced(
    name: str, ids: set[str], topics: dict[str, int]
) -> None:
    result = assign(name, same_subs(ids, topics), topics)
    assert set(result) == ids
    assert sorted(owners(result)) == all_partitions(topics)
    counts = [len(tps) for tps in result.values()]
    if name != "range" or len(topics) == 1:  # range balances per topic, not overall
        assert max(counts) - min(counts) <= 1


@given(
    subs=st.dictionaries(
        NAMES, st.frozensets(st.sampled_from(["a", "b", "c"]), min_size=1), min_size=1, max_size=8
    ),
    topics=TOPICS,
)
@settings(max_examples=100, deadline=None)
def test_unequal_subscriptions_only_subscribed_members(
    subs: dict[str, frozenset[str]], topics: dict[str, int]
) -> None:
    members = {m: MemberSubscription(t) for m, t in subs.items()}
    wanted = {tp for tp in all_partitions(topics) if any(tp.topic in t for t in subs.values())}
    for name in ASSIGNORS:
        result = assign(name, members, topics)
        own = owners(result)
        assert set(own) == wanted
        for tp, member in own.items():
            assert tp.topic in subs[member]


def held_counts(
    members: dict[str, MemberSubscription],
    topics: dict[str, int],
    current: dict[str, set[TopicPartition]],
) -> dict[str, dict[str, int]]:
    return held_of(members, topics, current)


@given(ids=MEMBER_IDS, topics=TOPICS, newcomer=NAMES)
@settings(max_examples=100, deadline=None)
def test_uniform_join_moves_exactly_the_minimum(
    ids: set[str], topics: dict[str, int], newcomer: str
) -> None:
    """The newcomer takes at least floor(P / (M+1)); with one topic nothing else moves, with
    several the per-topic spread can need a few more, and exactly the fewest (flow oracle)."""
    if newcomer in ids:
        return
    before = uniform_assign(same_subs(ids, topics), topics, {})
    joined = ids | {newcomer}
    members = same_subs(joined, topics)
    after = uniform_assign(members, topics, before)
    total = sum(topics.values())
    held = held_counts(members, topics, before)
    assert moved(before, after) == min_moves_equal(sorted(joined), topics, held)
    assert moved(before, after) >= total // len(joined)
    if len(topics) == 1:
        assert moved(before, after) == total // len(joined)
        assert len(after[newcomer]) == total // len(joined)
    counts = [len(t) for t in after.values()]
    assert max(counts) - min(counts) <= 1
    assert even_per_topic(counts_of(after), members, topics)


@given(ids=st.sets(NAMES, min_size=2, max_size=12), topics=TOPICS, data=st.data())
@settings(max_examples=100, deadline=None)
def test_uniform_leave_moves_only_what_the_spread_needs(
    ids: set[str], topics: dict[str, int], data: st.DataObject
) -> None:
    """With one topic a survivor never loses a partition; with several, the fewest moves
    that keep every topic within one (flow oracle)."""
    leaver = data.draw(st.sampled_from(sorted(ids)))
    before = uniform_assign(same_subs(ids, topics), topics, {})
    rest = ids - {leaver}
    members = same_subs(rest, topics)
    kept = {m: before[m] for m in rest}
    after = uniform_assign(members, topics, kept)
    held = held_counts(members, topics, kept)
    assert moved(kept, after) == min_moves_equal(sorted(rest), topics, held)
    if len(topics) == 1:
        for member in rest:
            assert before[member] <= after[member], "a surviving member lost a partition"
    counts = [len(t) for t in after.values()]
    assert max(counts) - min(counts) <= 1
    assert even_per_topic(counts_of(after), members, topics)


@given(ids=MEMBER_IDS, topics=TOPICS)
@settings(max_examples=60, deadline=None)
def test_uniform_is_stable_on_its_own_output(ids: set[str], topics: dict[str, int]) -> None:
    members = same_subs(ids, topics)
    first = uniform_assign(members, topics, {})
    assert uniform_assign(members, topics, first) == first


@given(
    ids=MEMBER_IDS,
    topics=TOPICS,
    current=st.dictionaries(
        NAMES, st.sets(st.tuples(st.sampled_from(["a", "b", "x"]), st.integers(0, 50)))
    ),
)
@settings(max_examples=100, deadline=None)
def test_uniform_moves_only_for_balance_from_any_start(
    ids: set[str], topics: dict[str, int], current: dict[str, set[tuple[str, int]]]
) -> None:
    """From an arbitrary (even invalid) current state: valid, balanced, even per topic, and
    the validly held partitions that move are exactly the fewest possible (flow oracle)."""
    cur = {m: {TopicPartition(t, p) for t, p in tps} for m, tps in current.items()}
    members = same_subs(ids, topics)
    result = uniform_assign(members, topics, cur)
    assert sorted(owners(result)) == all_partitions(topics)
    counts = [len(t) for t in result.values()]
    assert max(counts) - min(counts) <= 1
    assert even_per_topic(counts_of(result), members, topics)
    held = held_counts(members, topics, cur)
    fewest = min_moves_equal(sorted(ids), topics, held)
    assert moves(held, counts_of(result)) == fewest
    assert valid_moved(members, topics, cur, result) == fewest


def test_deterministic_regardless_of_input_order() -> None:
    topics = {"a": 7, "b": 5}
    ids = ["m3", "m1", "m2", "m10"]
    one = assign("uniform", {m: MemberSubscription(frozenset(topics)) for m in ids}, topics)
    two = assign(
        "uniform", {m: MemberSubscription(frozenset(topics)) for m in reversed(ids)}, topics
    )
    assert one == two


def test_range_matches_kafka() -> None:
    subs = {m: MemberSubscription(frozenset({"t"})) for m in ("c1", "c2", "c3")}
    result = assign("range", subs, {"t": 7})
    assert result["c1"] == {TopicPartition("t", p) for p in (0, 1, 2)}
    assert result["c2"] == {TopicPartition("t", p) for p in (3, 4)}
    assert result["c3"] == {TopicPartition("t", p) for p in (5, 6)}


def test_roundrobin_deals_in_order() -> None:
    subs = {m: MemberSubscription(frozenset({"t"})) for m in ("b", "a")}
    result = assign("roundrobin", subs, {"t": 4})
    assert result["a"] == {TopicPartition("t", 0), TopicPartition("t", 2)}
    assert result["b"] == {TopicPartition("t", 1), TopicPartition("t", 3)}


def test_no_members_and_unknown_assignor() -> None:
    assert assign("uniform", {}, {"t": 3}) == {}
    with pytest.raises(ConfigError, match="unknown assignor 'sticky'"):
        get_assignor("sticky")


@given(
    subs=st.dictionaries(
        NAMES, st.frozensets(st.sampled_from(["a", "b", "c"]), min_size=1), min_size=1, max_size=8
    ),
    topics=TOPICS,
)
@settings(max_examples=60, deadline=None)
def test_uniform_unequal_subscriptions_is_stable_on_its_own_output(
    subs: dict[str, frozenset[str]], topics: dict[str, int]
) -> None:
    members = {m: MemberSubscription(t) for m, t in subs.items()}
    first = uniform_assign(members, topics, {})
    assert uniform_assign(members, topics, first) == first


# -- per-topic spread (issue 13, 1) ----------------------------------------------------------

PATTERN_TOPICS = ["a", "b", "c", "d"]


@st.composite
def groups(
    draw: st.DrawFn, max_members: int = 30, max_count: int = 40, max_patterns: int = 3
) -> tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]]:
    """Members sharing a few subscriptions (so classes have several members), topics, and
    an arbitrary current assignment (partitions of unknown topics, out of range, unsubscribed,
    claimed twice, held by members that left)."""
    topics = draw(
        st.dictionaries(st.sampled_from(PATTERN_TOPICS), st.integers(1, max_count), min_size=1)
    )
    ids = draw(st.lists(NAMES, min_size=1, max_size=max_members, unique=True))
    patterns = draw(
        st.lists(
            st.frozensets(st.sampled_from(PATTERN_TOPICS), min_size=1),
            min_size=1,
            max_size=max_patterns,
        )
    )
    members = {m: MemberSubscription(draw(st.sampled_from(patterns))) for m in ids}
    tps = st.builds(
        TopicPartition, st.sampled_from([*PATTERN_TOPICS, "x"]), st.integers(0, max_count)
    )
    current = draw(
        st.dictionaries(st.sampled_from([*ids, "gone"]), st.sets(tps, max_size=3 * max_count))
    )
    return members, topics, current


@given(group=groups())
@settings(max_examples=150, deadline=None)
def test_uniform_spreads_every_topic_within_one_among_equal_subscriptions(
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]],
) -> None:
    members, topics, current = group
    result = uniform_assign(members, topics, current)
    counts = counts_of(result)
    for subscription, ids in classes(members, topics).items():
        for t in subscription & set(topics):
            got = [counts.get(m, {}).get(t, 0) for m in ids]
            assert max(got) - min(got) <= 1, (t, ids, got)
    assert chain_free(counts, members)
    assert uniform_assign(members, topics, result) == result


def test_uniform_gives_each_member_a_share_of_each_topic() -> None:
    """Balanced in count but one topic each: both topics are split (the fewest moves)."""
    members = same_subs({"a", "b"}, {"t1": 4, "t2": 4})
    current = {
        "a": {TopicPartition("t1", p) for p in range(4)},
        "b": {TopicPartition("t2", p) for p in range(4)},
    }
    result = uniform_assign(members, {"t1": 4, "t2": 4}, current)
    for m in ("a", "b"):
        assert sorted(tp.topic for tp in result[m]) == ["t1", "t1", "t2", "t2"]
    assert moved(current, result) == 4


def test_uniform_join_takes_a_share_of_each_topic() -> None:
    """A member alone holds t1 and t2; the one that joins gets half of each, not all of t2."""
    topics = {"t1": 4, "t2": 4}
    before = uniform_assign(same_subs({"a"}, topics), topics, {})
    after = uniform_assign(same_subs({"a", "b"}, topics), topics, before)
    for m in ("a", "b"):
        assert sorted(tp.topic for tp in after[m]) == ["t1", "t1", "t2", "t2"]
    assert moved(before, after) == 4


# -- full balance with unequal subscriptions (issue 13, 2) -----------------------------------


@st.composite
def small_groups(
    draw: st.DrawFn,
) -> tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]]:
    """Groups small enough to try every assignment: at most 5 members, 7 partitions."""
    members, topics, current = draw(groups(max_members=5, max_count=4, max_patterns=4))
    assume(sum(topics.values()) <= 7)
    return members, topics, current


@given(group=small_groups())
@settings(max_examples=250, deadline=None)
def test_uniform_matches_brute_force(
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]],
) -> None:
    """Against every possible assignment: the loads are the most balanced there are (sorted
    from the largest, lexicographically least; so is the spread and the sum of squares); every
    topic is within one among equal subscriptions; the fewest partitions leave the members
    of their owner's subscription, and within each subscription the fewest move given the
    totals it got; with one subscription, or each member its own, the fewest moves overall."""
    members, topics, current = group
    result = uniform_assign(members, topics, current)
    counts, held = counts_of(result), held_of(members, topics, current)
    ids = sorted(members)
    every = list(all_counts(members, topics))
    best = min(loads_key(c, ids) for c in every)
    assert loads_key(counts, ids) == best
    assert max(best) - min(best) == min(
        max(k) - min(k) for k in map(lambda c: loads_key(c, ids), every)
    )
    squares = {sum(x * x for x in loads_key(c, ids)) for c in every}
    assert sum(x * x for x in best) == min(squares)
    assert chain_free(counts, members)
    assert even_per_topic(counts, members, topics)
    balanced = [c for c in every if loads_key(c, ids) == best]
    assert class_moves(held, counts, members, topics) == min(
        class_moves(held, c, members, topics) for c in balanced
    )
    for subscription, class_ids in classes(members, topics).items():
        totals = {
            t: sum(counts[m].get(t, 0) for m in class_ids) for t in subscription if t in topics
        }
        within = sum(
            max(0, held[m].get(t, 0) - counts[m].get(t, 0)) for m in class_ids for t in held[m]
        )
        assert within == within_class_min(class_ids, totals, held)
    groups_of = classes(members, topics)
    if len(groups_of) == 1 or all(len(v) == 1 for v in groups_of.values()):
        fewest = min(moves(held, c) for c in balanced if even_per_topic(c, members, topics))
        assert moves(held, counts) == fewest
    assert valid_moved(members, topics, current, result) == moves(held, counts)


def test_uniform_reaches_balance_through_a_chain_of_moves() -> None:
    """1/2/3 where no single move narrows a gap of two, but c -> b -> a gives 2/2/2."""
    members = {
        "a": MemberSubscription(frozenset({"x"})),
        "b": MemberSubscription(frozenset({"x", "y"})),
        "c": MemberSubscription(frozenset({"y"})),
    }
    topics = {"x": 3, "y": 3}
    current = {
        "a": {TopicPartition("x", 0)},
        "b": {TopicPartition("x", 1), TopicPartition("x", 2)},
        "c": {TopicPartition("y", p) for p in range(3)},
    }
    result = uniform_assign(members, topics, current)
    assert sorted(len(tps) for tps in result.values()) == [2, 2, 2]
    assert moved(current, result) == 2


@given(group=groups(max_members=40, max_count=60, max_patterns=40))
@settings(max_examples=100, deadline=None)
def test_uniform_no_chain_of_moves_narrows_a_gap_of_two(
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]],
) -> None:
    """Larger groups, each member often with its own subscription: valid, balanced in the
    chain sense, even per topic, and a fixed point."""
    members, topics, current = group
    result = uniform_assign(members, topics, current)
    owner = owners(result)
    wanted = {
        tp for tp in all_partitions(topics) if any(tp.topic in s.topics for s in members.values())
    }
    assert set(owner) == wanted
    assert all(tp.topic in members[m].topics for tp, m in owner.items())
    counts = counts_of(result)
    assert chain_free(counts, members)
    assert even_per_topic(counts, members, topics)
    assert uniform_assign(members, topics, result) == result


@given(group=small_groups(), data=st.data())
@settings(max_examples=150, deadline=None)
def test_uniform_keeps_an_assignment_that_already_meets_every_guarantee(
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]],
    data: st.DataObject,
) -> None:
    """Any assignment that is balanced and even per topic comes back unchanged."""
    members, topics, _ = group
    ids = sorted(members)
    every = list(all_counts(members, topics))
    best = min(loads_key(c, ids) for c in every)
    fine = [c for c in every if loads_key(c, ids) == best and even_per_topic(c, members, topics)]
    chosen = data.draw(st.sampled_from(fine))
    rng = random.Random(data.draw(st.integers(0, 1000)))
    current: dict[str, set[TopicPartition]] = {m: set() for m in ids}
    for t, n in topics.items():
        parts = list(range(n))
        rng.shuffle(parts)
        for m in ids:
            for _ in range(chosen[m].get(t, 0)):
                current[m].add(TopicPartition(t, parts.pop()))
    assert uniform_assign(members, topics, current) == current


# -- static members under every assignor (issue 13, 3) ---------------------------------------


@st.composite
def static_groups(
    draw: st.DrawFn,
) -> tuple[dict[str, MemberSubscription], dict[str, int], dict[str, str]]:
    """Members, some static (instance ids), and new member ids for the static ones (a
    restart of each), sorting anywhere among the others."""
    members, topics, _ = draw(groups(max_members=10, max_count=20))
    instances = draw(st.lists(NAMES, min_size=len(members), max_size=len(members), unique=True))
    static = {}
    for (m, sub), instance in zip(sorted(members.items()), instances, strict=True):
        if draw(st.booleans()):
            members[m] = MemberSubscription(sub.topics, "pod-" + instance)
            static[m] = m
    taken = set(members)
    for m in static:
        new = draw(NAMES.filter(lambda x: x not in taken))
        taken.add(new)
        static[m] = new
    return members, topics, static


def renamed(
    members: dict[str, MemberSubscription], new_ids: dict[str, str]
) -> dict[str, MemberSubscription]:
    return {new_ids.get(m, m): sub for m, sub in members.items()}


@pytest.mark.parametrize("name", sorted(ASSIGNORS))
@given(group=static_groups(), joiner=st.frozensets(st.sampled_from(PATTERN_TOPICS), min_size=1))
@settings(max_examples=80, deadline=None)
def test_static_member_restart_moves_nothing_under_every_assignor(
    name: str,
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, str]],
    joiner: frozenset[str],
) -> None:
    """Static members restart under new member ids (the coordinator carries each one's
    target over to its new id): the next rebalance gives every member exactly what it gives
    when nobody restarted, here when another member joins."""
    members, topics, new_ids = group
    first = assign(name, members, topics)
    carried = {new_ids.get(m, m): tps for m, tps in first.items()}
    again = assign(name, renamed(members, new_ids), topics, carried)
    assert again == carried, "a static restart moved partitions"
    newcomer = {"zz-joiner": MemberSubscription(joiner)}
    plain = assign(name, {**members, **newcomer}, topics, first)
    restarted = assign(name, {**renamed(members, new_ids), **newcomer}, topics, carried)
    assert restarted == {new_ids.get(m, m): tps for m, tps in plain.items()}


@pytest.mark.parametrize("name", sorted(ASSIGNORS))
def test_static_members_are_ordered_by_instance_id(name: str) -> None:
    """Range/round-robin order: static members by instance id (first), then member ids."""
    members = {
        "z1": MemberSubscription(frozenset({"t"}), "pod-0"),
        "a1": MemberSubscription(frozenset({"t"}), "pod-1"),
        "m": MemberSubscription(frozenset({"t"})),
    }
    result = assign(name, members, {"t": 3})
    assert [sorted(tp.partition for tp in result[m]) for m in ("z1", "a1", "m")] == [[0], [1], [2]]


# -- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ASSIGNORS))
@given(group=groups(max_members=12), seed=st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_every_assignor_ignores_dict_and_set_order(
    name: str,
    group: tuple[dict[str, MemberSubscription], dict[str, int], dict[str, set[TopicPartition]]],
    seed: int,
) -> None:
    members, topics, current = group
    rng = random.Random(seed)

    def shuffled(d: dict[str, object]) -> list[str]:
        keys = list(d)
        rng.shuffle(keys)
        return keys

    members2 = {
        m: MemberSubscription(frozenset(sorted(s.topics, reverse=True)), s.instance_id)
        for m in shuffled(dict(members))
        for s in [members[m]]
    }
    topics2 = {t: topics[t] for t in shuffled(dict(topics))}
    current2 = {m: set(sorted(current[m], reverse=True)) for m in shuffled(dict(current))}
    assert assign(name, members, topics, current) == assign(name, members2, topics2, current2)


DETERMINISM_SCRIPT = """
import json, random
from coordinator.assignors import ASSIGNORS, assign
from partitions._base.types import MemberSubscription, TopicPartition
rng = random.Random(7)
topics = {f"t{i}": rng.randint(5, 60) for i in range(12)}
names = sorted(topics)
pats = [frozenset(rng.sample(names, rng.randint(1, 12))) for _ in range(30)]
members = {
    f"m{i}": MemberSubscription(rng.choice(pats), f"pod-{i}" if i % 3 == 0 else None)
    for i in range(80)
}
first = assign("uniform", members, topics)
members.update({f"n{i}": MemberSubscription(rng.choice(pats)) for i in range(20)})
current = {m: set(tps) for m, tps in first.items()}
out = {}
for name in sorted(ASSIGNORS):
    result = assign(name, members, topics, current)
    out[name] = {m: sorted(map(list, tps)) for m, tps in sorted(result.items())}
print(json.dumps(out))
"""


def test_every_assignor_gives_the_same_result_in_every_process() -> None:
    """String hashing differs between processes (PYTHONHASHSEED): every member of a group
    must still compute the same target."""
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for seed in ("0", "1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            check=True,
            timeout=60,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1
