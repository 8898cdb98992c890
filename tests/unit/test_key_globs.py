"""The ACL key patterns of partitions._base.keys match exactly the keys they stand for."""

from __future__ import annotations

from fnmatch import fnmatchcase

from partitions._base.keys import Keys

K = Keys("ns")


def test_each_partition_glob_matches_its_own_keys_of_every_partition_only() -> None:
    globs = {
        K.stream_glob("a"): K.stream,
        K.fence_glob("a"): K.fence,
        K.seq_glob("a"): K.seq,
        K.dlq_glob("a"): K.dlq,
        K.stream_groups_glob("a"): K.stream_groups,
    }
    for glob, key_of in globs.items():
        for p in (0, 7, 123):
            assert fnmatchcase(key_of("a", p), glob)
            for other in K.partition_keys("a", p):
                assert fnmatchcase(other, glob) == (other == key_of("a", p)), (glob, other)
            # Another topic whose name starts the same is not matched.
            assert not any(fnmatchcase(k, glob) for k in K.partition_keys("a.b", p))
        assert not fnmatchcase(K.topic_meta("a"), glob)


def test_group_glob_covers_the_groups_coordinator_keys_only() -> None:
    assert all(fnmatchcase(k, K.group_glob("g")) for k in K.group_keys("g"))
    assert not any(fnmatchcase(k, K.group_glob("g")) for k in K.group_keys("g2"))
    assert not fnmatchcase(K.groups, K.group_glob("g"))


def test_namespace_glob_covers_every_key_of_the_namespace_and_no_other() -> None:
    every = [K.topics, K.groups, K.topic_meta("a"), *K.partition_keys("a", 0), *K.group_keys("g")]
    assert all(fnmatchcase(k, K.namespace_glob) for k in every)
    assert not any(fnmatchcase(k, K.namespace_glob) for k in Keys("ns2").group_keys("g"))
