"""Routing: which partition a record goes to. Pure functions over plain data.

The rule, stable across processes, machines and partstream versions:

* an explicit ``partition`` always wins;
* a keyed record goes to ``xxh3_64(key) % N`` (``routing = "modulo"``, the default), or to
  ``jump(xxh3_64(key), N)`` (``routing = "jump"``: Lamping & Veach's jump consistent hash);
* a topic with regions maps each region to a partition range ``[first, last]``; a record's
  region picks the range and its key is hashed within it (same rule, over the range's size);
* a keyless record is sticky: it goes to the partition the producer's current keyless batch
  fills, which rotates once that batch is sent (see :class:`StickyPartitioner`).

Growing N is an explicit admin act. With ``modulo`` a key stays put only if
``h % N_old == h % N_new``, so most keys move (8 -> 16 moves half of them, 8 -> 12 two
thirds); with ``jump`` only the keys needed to fill the new partitions move
(1 - N_old/N_new of them: 8 -> 12 moves one third). Records already written stay in their
old partition, so a moved key's order across the change holds only once consumers have
drained the old partition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import xxhash

from partitions._base.errors import ConfigError

ROUTINGS = ("modulo", "jump")

_xxh3 = xxhash.xxh3_64_intdigest
# The hash itself, for the producers' inlined ``xxh3(key) % n``.
xxh3 = _xxh3


def key_hash(key: bytes) -> int:
    """xxh3_64 of the key bytes, seed 0: the hash every partstream process agrees on."""
    return int(_xxh3(key))


def jump_hash(h: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach 2014) of a 64-bit hash into ``buckets``."""
    b, j = -1, 0
    while j < buckets:
        b = j
        h = (h * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((h >> 33) + 1)))
    return b


def validate_regions(regions: Mapping[str, tuple[int, int]], partitions: int) -> None:
    """Each region's range must be non-empty and inside ``[0, partitions)``."""
    from partitions._base.keys import validate_name

    for name, rng in regions.items():
        validate_name(name, "region")
        try:
            first, last = int(rng[0]), int(rng[1])
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"region {name!r}: range must be [first, last]") from None
        if len(rng) != 2 or not 0 <= first <= last < partitions:
            raise ConfigError(
                f"region {name!r}: range {list(rng)} must satisfy 0 <= first <= last < "
                f"{partitions} (the partition count)"
            )


@dataclass(frozen=True, slots=True)
class Router:
    """Maps (key, region, partition) to a partition of one topic. Immutable, thread-safe."""

    partitions: int
    routing: str = "modulo"
    regions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigError("a topic needs at least one partition")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"unknown routing {self.routing!r}; use one of {ROUTINGS}")
        validate_regions(self.regions, self.partitions)

    def for_key(self, key: bytes) -> int:
        """Partition of a keyed record with no region."""
        if self.routing == "modulo":
            return _xxh3(key) % self.partitions
        return jump_hash(_xxh3(key), self.partitions)

    def key_partitioner(self) -> Callable[[bytes], int]:
        """:meth:`for_key` as a closure over this topic's partition count: the same rule, at
        the cost of one call on the producer's hot path."""
        n = self.partitions
        if self.routing == "modulo":
            return lambda key: _xxh3(key) % n
        return lambda key: jump_hash(_xxh3(key), n)

    def range_for(self, region: str | None) -> tuple[int, int]:
        """The ``[first, last]`` partitions a region's records may go to (all if None)."""
        if region is None:
            return (0, self.partitions - 1)
        try:
            return self.regions[region]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError(f"unknown region {region!r} (known: {known})") from None

    def route(self, key: bytes | None, region: str | None = None) -> int | None:
        """Partition for a keyed record, or None for a keyless one (the sticky rule decides)."""
        if region is None:
            return None if key is None else self.for_key(key)
        first, last = self.range_for(region)
        if key is None:
            return None
        width = last - first + 1
        h = _xxh3(key)
        return first + (h % width if self.routing == "modulo" else jump_hash(h, width))


class StickyPartitioner:
    """Keyless records stick to one partition per batch, then rotate (Kafka KIP-480).

    Not thread-safe on its own: the producer calls it under its lock.
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        # (topic, region) -> [current, first, last]
        self._current: dict[tuple[str, str | None], list[int]] = {}

    def partition(self, topic: str, region: str | None, first: int, last: int) -> int:
        state = self._current.get((topic, region))
        if state is None or state[1] != first or state[2] != last:
            state = [first, first, last]
            self._current[(topic, region)] = state
        return state[0]

    def rotate(self, topic: str, sealed: int) -> None:
        """Partition ``sealed`` of ``topic`` got its batch sealed: move keyless records on."""
        for (t, _region), state in self._current.items():
            if t == topic and state[0] == sealed:
                current, first, last = state
                state[0] = first + (current - first + 1) % (last - first + 1)
