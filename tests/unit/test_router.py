"""Router properties: stable, total, near-uniform, regions respected."""

from __future__ import annotations

import subprocess
import sys

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions._base.errors import ConfigError
from partitions._producer.router import Router, StickyPartitioner, jump_hash

keys = st.binary(min_size=0, max_size=64)
counts = st.integers(min_value=1, max_value=512)


@given(keys, counts)
def test_modulo_is_xxh3_mod_n(key: bytes, n: int) -> None:
    assert Router(n).for_key(key) == xxhash.xxh3_64_intdigest(key) % n


@given(keys, counts, st.sampled_from(["modulo", "jump"]))
def test_every_key_lands_in_exactly_one_valid_partition(key: bytes, n: int, routing: str) -> None:
    r = Router(n, routing)
    p = r.for_key(key)
    assert 0 <= p < n
    assert r.for_key(key) == p  # deterministic


@given(st.lists(keys, min_size=1, max_size=20), st.integers(2, 64))
@settings(max_examples=50)
def test_jump_moves_only_to_new_partitions(ks: list[bytes], n: int) -> None:
    for k in ks:
        h = xxhash.xxh3_64_intdigest(k)
        before, after = jump_hash(h, n), jump_hash(h, n + 1)
        assert after in (before, n)  # a key either stays or moves to the new partition


def test_stable_across_processes() -> None:
    sample = [f"key-{i}".encode() for i in range(200)]
    here = [Router(16).for_key(k) for k in sample] + [Router(16, "jump").for_key(k) for k in sample]
    code = (
        "from partitions._producer.router import Router\n"
        "s=[f'key-{i}'.encode() for i in range(200)]\n"
        "print([Router(16).for_key(k) for k in s]+[Router(16,'jump').for_key(k) for k in s])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)


def test_known_values_never_change() -> None:
    # Pinned: changing these would move every existing key to another partition.
    assert [Router(8).for_key(k.encode()) for k in ("a", "tenant-1", "order-42")] == [
        xxhash.xxh3_64_intdigest(b"a") % 8,
        xxhash.xxh3_64_intdigest(b"tenant-1") % 8,
        xxhash.xxh3_64_intdigest(b"order-42") % 8,
    ]
    assert xxhash.xxh3_64_intdigest(b"a") == 16629034431890738719


@pytest.mark.parametrize("routing", ["modulo", "jump"])
def test_near_uniform(routing: str) -> None:
    n, total = 16, 64_000
    r = Router(n, routing)
    hist = [0] * n
    for i in range(total):
        hist[r.for_key(f"k{i}".encode())] += 1
    expected = total / n
    chi2 = sum((c - expected) ** 2 / expected for c in hist)
    # 15 degrees of freedom: p = 0.001 at 37.7
    assert chi2 < 37.7, hist


@given(keys)
def test_regions_stay_in_range(key: bytes) -> None:
    r = Router(8, regions={"eu": (0, 3), "us": (4, 7)})
    assert 0 <= r.route(key, "eu") <= 3  # type: ignore[operator]
    assert 4 <= r.route(key, "us") <= 7  # type: ignore[operator]


def test_bad_regions_and_routing_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Router(4, regions={"eu": (0, 4)})
    with pytest.raises(ConfigError):
        Router(4, regions={"eu": (3, 1)})
    with pytest.raises(ConfigError):
        Router(4, "ring")
    with pytest.raises(ConfigError):
        Router(0)
    with pytest.raises(ConfigError, match="unknown region"):
        Router(4, regions={"eu": (0, 1)}).route(b"k", "apac")


def test_keyless_is_none_and_sticky_rotates() -> None:
    assert Router(4).route(None) is None
    sticky = StickyPartitioner()
    assert sticky.partition("t", None, 0, 3) == 0
    sticky.rotate("t", 0)
    assert sticky.partition("t", None, 0, 3) == 1
    sticky.rotate("t", 2)  # another partition's batch: no change
    assert sticky.partition("t", None, 0, 3) == 1
    assert sticky.partition("t", "us", 4, 7) == 4
    sticky.rotate("t", 4)
    assert sticky.partition("t", "us", 4, 7) == 5
