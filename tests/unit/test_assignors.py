"""Assignor properties: coverage, balance, stickiness, determinism (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.assignors import ASSIGNORS, assign, get_assignor, uniform_assign
from coordinator.errors import ConfigError
from coordinator.types import MemberSubscription, TopicPartition, all_partitions

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


@given(ids=MEMBER_IDS, topics=TOPICS, newcomer=NAMES)
@settings(max_examples=100, deadline=None)
def test_uniform_join_moves_exactly_the_minimum(
    ids: set[str], topics: dict[str, int], newcomer: str
) -> None:
    if newcomer in ids:
        return
    before = uniform_assign(same_subs(ids, topics), topics, {})
    joined = ids | {newcomer}
    after = uniform_assign(same_subs(joined, topics), topics, before)
    total = sum(topics.values())
    # The newcomer must get at least floor(P / (M+1)) to be within one; nothing else moves.
    assert moved(before, after) == total // len(joined)
    assert len(after[newcomer]) == total // len(joined)
    counts = [len(t) for t in after.values()]
    assert max(counts) - min(counts) <= 1


@given(ids=st.sets(NAMES, min_size=2, max_size=12), topics=TOPICS, data=st.data())
@settings(max_examples=100, deadline=None)
def test_uniform_leave_moves_only_the_leavers_partitions(
    ids: set[str], topics: dict[str, int], data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(sorted(ids)))
    before = uniform_assign(same_subs(ids, topics), topics, {})
    rest = ids - {leaver}
    after = uniform_assign(same_subs(rest, topics), topics, before)
    for member in rest:
        assert before[member] <= after[member], "a surviving member lost a partition"
    counts = [len(t) for t in after.values()]
    assert max(counts) - min(counts) <= 1


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
    """From an arbitrary (even invalid) current state: valid, balanced, and a member keeps
    min(what it validly held, its quota) partitions."""
    cur = {m: {TopicPartition(t, p) for t, p in tps} for m, tps in current.items()}
    members = same_subs(ids, topics)
    result = uniform_assign(members, topics, cur)
    assert sorted(owners(result)) == all_partitions(topics)
    counts = [len(t) for t in result.values()]
    assert max(counts) - min(counts) <= 1
    low = sum(topics.values()) // len(ids)
    claimed: set[TopicPartition] = set()
    for member in sorted(ids):
        valid = {
            tp
            for tp in cur.get(member, set())
            if tp.topic in topics and tp.partition < topics[tp.topic] and tp not in claimed
        }
        claimed |= valid
        assert len(result[member] & valid) >= min(len(valid), low)


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
