"""The ACL key patterns of partitions._base.keys match exactly the keys they stand for, for
topics with chosen tags and for topics stored without them (the original tags)."""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

import pytest

from partitions._base.keys import Keys, TopicLayout

K = Keys("ns")
N = 130


def _layouts(topic: str) -> list[TopicLayout]:
    return [TopicLayout(topic, N), TopicLayout.spread(topic, N)]


@pytest.mark.parametrize("layout", _layouts("a"), ids=["original tags", "chosen tags"])
def test_each_partition_glob_matches_its_own_keys_of_every_partition_only(
    layout: TopicLayout,
) -> None:
    globs: dict[str, Callable[[TopicLayout, int], str]] = {
        K.stream_glob("a"): K.stream,
        K.fence_glob("a"): K.fence,
        K.seq_glob("a"): K.seq,
        K.dlq_glob("a"): K.dlq,
        K.stream_groups_glob("a"): K.stream_groups,
        K.applied_glob("a"): K.applied,
    }
    for glob, key_of in globs.items():
        for p in (0, 7, 123):
            assert fnmatchcase(key_of(layout, p), glob)
            for other in K.partition_keys(layout, p):
                assert fnmatchcase(other, glob) == (other == key_of(layout, p)), (glob, other)
            # Another topic whose name starts the same is not matched, whatever its tags.
            for near in _layouts("a.b"):
                assert not any(fnmatchcase(k, glob) for k in K.partition_keys(near, p))
        assert not fnmatchcase(K.topic_meta("a"), glob)


def test_group_glob_covers_the_groups_coordinator_keys_only() -> None:
    assert all(fnmatchcase(k, K.group_glob("g")) for k in K.group_keys("g"))
    assert not any(fnmatchcase(k, K.group_glob("g")) for k in K.group_keys("g2"))
    assert not fnmatchcase(K.groups, K.group_glob("g"))


def test_namespace_glob_covers_every_key_of_the_namespace_and_no_other() -> None:
    spread = TopicLayout.spread("a", 1)
    every = [K.topics, K.groups, K.topic_meta("a"), *K.partition_keys(spread, 0)]
    every += [*K.partition_keys(TopicLayout("a", 1), 0), *K.group_keys("g")]
    assert all(fnmatchcase(k, K.namespace_glob) for k in every)
    assert not any(fnmatchcase(k, K.namespace_glob) for k in Keys("ns2").group_keys("g"))
