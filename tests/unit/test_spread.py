"""Partition hash tags on evenly spaced cluster slots (partitions._base.slots, TopicLayout):
per-primary counts on evenly split clusters, exact slots, determinism, growth that moves no
existing partition. Slots are computed with redis-py's own key_slot, not ours."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.crc import key_slot as redis_key_slot

from partitions._base import slots
from partitions._base.errors import ConfigError
from partitions._base.keys import Keys, TopicLayout
from partitions._client.cluster import slot_ranges

K = Keys("ps")


def cli_ranges(masters: int) -> list[tuple[int, int]]:
    """The split ``redis-cli --cluster create`` makes (ranges ends rounded, not floored)."""
    out, first, cursor, per = [], 0, 0.0, slots.SLOTS / masters
    for i in range(masters):
        last = round(cursor + per - 1)
        if last > slots.SLOTS or i == masters - 1:
            last = slots.SLOTS - 1
        out.append((first, max(last, first)))
        first, cursor = max(last, first) + 1, cursor + per
    return out


def per_primary(layout: TopicLayout, ranges: list[tuple[int, int]]) -> list[int]:
    found = [redis_key_slot(K.stream(layout, p).encode()) for p in range(layout.partitions)]
    return [sum(lo <= s <= hi for s in found) for lo, hi in ranges]


@pytest.mark.parametrize("masters", [3, 4, 6])
@pytest.mark.parametrize("split", [slot_ranges, cli_ranges], ids=["embedded", "redis-cli"])
def test_every_primary_of_an_evenly_split_cluster_gets_floor_or_ceil(
    masters: int, split: Callable[[int], list[tuple[int, int]]]
) -> None:
    for n in range(1, 65):
        counts = per_primary(TopicLayout.spread("orders", n), split(masters))
        assert max(counts) - min(counts) <= 1, (n, masters, counts)
        assert sum(counts) == n


def test_other_names_and_cluster_sizes_spread_evenly_too() -> None:
    for name in ("a", "events.v2", "t0", "x" * 100):
        for masters in (2, 5, 7, 8, 16):
            for n in (1, 7, 8, 12, 30, 64, 100, 257):
                counts = per_primary(TopicLayout.spread(name, n), slot_ranges(masters))
                assert max(counts) - min(counts) <= 1, (name, n, masters, counts)


def test_eight_partitions_on_three_primaries_are_3_3_2_where_the_old_tags_were_4_2_2() -> None:
    old = sorted(per_primary(TopicLayout("orders", 8), slot_ranges(3)))
    new = sorted(per_primary(TopicLayout.spread("orders", 8), slot_ranges(3)))
    assert (old, new) == ([2, 2, 4], [2, 3, 3])


def test_the_tag_lands_on_the_chosen_slot_and_all_keys_of_a_partition_share_it() -> None:
    for n in (1, 8, 100, 4096):
        wanted = slots.spread_slots("orders", n)
        layout = TopicLayout.spread("orders", n)
        for p in range(0, n, max(1, n // 50)):
            got = {redis_key_slot(k.encode()) for k in K.partition_keys(layout, p)}
            assert got == {wanted[p]} == {layout.slot(p)}, (n, p)
    assert len(set(slots.spread_slots("orders", 4096))) == 4096


def test_our_key_slot_is_redis_pys() -> None:
    for key in ("ps:t:{orders:3:k2x9}", "plain", "{}x", "a{b}c{d}", "{", "x{}{y}"):
        assert slots.key_slot(key) == redis_key_slot(key.encode())


def test_every_slot_has_a_suffix_and_the_choice_is_deterministic() -> None:
    for slot in (0, 1, 5461, 8191, 16383):
        suffix = slots.tag_suffix("orders:0:", slot)
        assert len(suffix) == slots.SUFFIX_LENGTH and suffix.isalnum() and suffix.islower()
        assert redis_key_slot(f"{{orders:0:{suffix}}}".encode()) == slot
    assert TopicLayout.spread("orders", 12) == TopicLayout.spread("orders", 12)
    with pytest.raises(ValueError):
        slots.tag_suffix("x", slots.SLOTS)


def test_the_metadata_field_round_trips_and_bad_suffixes_are_refused() -> None:
    layout = TopicLayout.spread("orders", 5)
    again = TopicLayout.from_field("orders", 5, layout.field)
    assert again == layout and again.spread_out
    old = TopicLayout.from_field("orders", 5, None)
    assert old.tags == () and not old.spread_out and old.tag(4) == "orders:4"
    for bad in ("ab}c", "a*", "A1", "x" * 17):
        with pytest.raises(ConfigError, match="tag suffix"):
            TopicLayout("orders", 1, (bad,))
    with pytest.raises(ConfigError, match=r"partitions 0\.\.4"):
        layout.tag(5)


def test_growth_keeps_every_existing_tag_and_adds_spread_ones() -> None:
    base = TopicLayout.spread("orders", 8)
    grown = base.grown(12)
    assert grown.tags[:8] == base.tags and len(grown.tags) == 12 and all(grown.tags)
    assert per_primary(grown, slot_ranges(3)) == [4, 4, 4]
    assert base.grown(8) is base
    with pytest.raises(ConfigError, match="cannot shrink"):
        base.grown(7)
    # A topic stored without tags keeps them for its old partitions; new ones get tags.
    old = TopicLayout("orders", 8).grown(12)
    assert old.tags[:8] == ("",) * 8 and all(old.tags[8:])
    assert [K.stream(old, p) for p in range(8)] == [f"ps:t:{{orders:{p}}}" for p in range(8)]


def test_growth_stays_near_even_and_says_how_near() -> None:
    # Growth from any a <= 32 to any b <= 64 leaves the primaries of a 3-, 4- or 6-way split
    # at most GROWTH_SPREAD partitions apart (measured: 2, in 352 of the 4,560 cases; 1 or
    # 0 in the others), where a new topic of b partitions would be at most 1 apart.
    worst = 0
    for a in range(1, 33):
        layout = TopicLayout.spread("orders", a)
        for b in range(a + 1, 65):
            grown = layout.grown(b)
            for masters in (3, 4, 6):
                counts = per_primary(grown, slot_ranges(masters))
                worst = max(worst, max(counts) - min(counts))
    assert worst <= GROWTH_SPREAD


GROWTH_SPREAD = 2
