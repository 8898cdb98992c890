"""Cluster hash slots, and the slots a topic's partitions are given so they spread evenly.

A Redis/Valkey Cluster maps a key to one of :data:`SLOTS` slots by the CRC16 (XMODEM: the
polynomial 0x1021, initial value 0) of its hash tag, and each primary serves slot ranges.
Left to the CRC, the tags ``{orders:0}`` .. ``{orders:7}`` put 4 partitions on one of three
primaries and 2 on each other one. So a new topic picks a slot for each partition first,
evenly spaced over 0..16383, and then a short suffix of the partition's tag that lands
exactly there (:func:`tag_suffix`); the suffixes are recorded in the topic's metadata, so
every client derives the same keys (:class:`partitions._base.keys.TopicLayout`).

Why evenly spaced slots spread evenly: if a cluster of k primaries holds contiguous ranges
of near-equal size, each range is an arc of about 16384/k slots, and an arc of that length
holds ⌊N/k⌋ or ⌈N/k⌉ of N evenly spaced points whatever their offset. Integer slots and
range ends rounded either way move a point or a range end by less than one slot, so a
layout whose every slot is at least 2 slots away from every ``i * 16384 / k`` keeps that
bound for every such cluster. :func:`spread_slots` searches an offset (starting from a
point that depends on the topic's name, so the primary that gets the extra partitions
varies from topic to topic) whose slots keep that margin for k = 2..16; a large N, where
no offset keeps it, falls back to cell centres (``(2p + 1) * 16384 / 2N``), which still
give every k = 2..16 the ⌊N/k⌋/⌈N/k⌉ counts for N up to 2,737 (checked by
tests/unit/test_spread.py).

Growing a topic keeps every existing partition where it is: the new count's evenly spaced
slots are laid with the offset closest to the existing ones, each existing partition claims
its nearest, and the new partitions take the rest (:func:`grow_slots`). That is near even,
not exact: after growth from a to b partitions (a <= 32, b <= 64) the primaries of a 3-, 4-
or 6-way split are at most 2 partitions apart (tests/unit/test_spread.py).
"""

from __future__ import annotations

import itertools
from binascii import crc_hqx
from collections.abc import Sequence
from functools import cache

SLOTS = 16384
_MASK = SLOTS - 1

# The suffixes a tag may get: 4 characters of [0-9a-z], tried in this order. The first
# suffix of each CRC value is kept; 4 characters reach all 16384 slots (3 reach 16287).
SUFFIX_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
SUFFIX_LENGTH = 4
_ZEROS = b"\0" * SUFFIX_LENGTH

# Cluster sizes whose range ends an offset must keep its margin from.
MARGIN_PRIMARIES = range(2, 17)
_MARGIN = 2


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key``: CRC16 of its hash tag (the text inside the first ``{``
    and the next ``}``, when not empty), else of the whole key, modulo 16384."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc_hqx(raw, 0) & _MASK


@cache
def _suffix_table() -> tuple[str, ...]:
    """For each 14-bit value v, the first suffix (in alphabet order) whose CRC ends in v."""
    table: dict[int, str] = {}
    for chars in itertools.product(SUFFIX_ALPHABET, repeat=SUFFIX_LENGTH):
        suffix = "".join(chars)
        table.setdefault(crc_hqx(suffix.encode(), 0) & _MASK, suffix)
        if len(table) == SLOTS:
            break
    if len(table) != SLOTS:  # a change of the alphabet or length above would do it
        raise AssertionError(f"tag suffixes reach only {len(table)} of {SLOTS} slots")
    return tuple(table[v] for v in range(SLOTS))


def tag_suffix(prefix: str, slot: int) -> str:
    """The suffix s (:data:`SUFFIX_LENGTH` characters) such that the tag ``prefix + s``
    hashes to ``slot``.

    The CRC (initial value 0, no final xor) is linear: CRC(P + S) = CRC(P + zeros) ^ CRC(S)
    for an S as long as the zeros, so one table of CRC(S) answers every prefix.
    """
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot must be 0..{SLOTS - 1}, got {slot}")
    base = crc_hqx(_ZEROS, crc_hqx(prefix.encode(), 0)) & _MASK
    return _suffix_table()[slot ^ base]


def _clear_of_range_ends(slot: int) -> bool:
    # |slot - i * SLOTS / k| >= _MARGIN for every i, in integers: |slot*k - i*SLOTS| >= _MARGIN*k.
    for k in MARGIN_PRIMARIES:
        scaled = slot * k
        i = (scaled + SLOTS // 2) // SLOTS  # the nearest range end (0 and SLOTS included)
        if abs(scaled - i * SLOTS) < _MARGIN * k:
            return False
    return True


def centred_slots(partitions: int) -> list[int]:
    """Slot ``(2p + 1) * 16384 // 2N`` for partition p: the centres of N equal cells."""
    return [(2 * p + 1) * SLOTS // (2 * partitions) for p in range(partitions)]


def spread_slots(topic: str, partitions: int) -> list[int]:
    """Evenly spaced slots for the N partitions of a new topic (see the module docstring):
    slot ``o + p * 16384 // N`` for the first offset o, from a start given by the topic's
    name, whose slots keep the margin; else the cell centres. Deterministic."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    cell = SLOTS // partitions
    steps = [p * SLOTS // partitions for p in range(partitions)]
    start = crc_hqx(topic.encode(), 0) % cell if cell > 1 else 0
    for j in range(cell):
        offset = (start + j) % cell
        slots = [(offset + s) % SLOTS for s in steps]
        if all(_clear_of_range_ends(s) for s in slots):
            return slots
    return centred_slots(partitions)


def _gap(a: int, b: int) -> int:
    d = abs(a - b) % SLOTS
    return min(d, SLOTS - d)


def grow_slots(topic: str, taken: Sequence[int], partitions: int) -> list[int]:
    """Slots for partitions ``len(taken) .. partitions - 1`` of a growing topic whose
    existing partitions hold the slots ``taken`` (which never move).

    The new count's evenly spaced slots ``o + p * 16384 // N`` are laid with the offset o
    that puts them closest to the slots taken (the smallest largest distance, then the
    smallest sum); each slot taken claims its nearest one, and the new partitions take the
    rest in slot order. Existing partitions are then at most half a cell off the even
    layout (they are fewer than its slots, and farther apart: no two claim the same one)."""
    n_new = partitions - len(taken)
    if n_new <= 0:
        return []
    if not taken:
        return spread_slots(topic, partitions)
    cell = SLOTS // partitions
    steps = [p * SLOTS // partitions for p in range(partitions)]
    best: tuple[int, int, int] | None = None
    for offset in range(cell):
        far = total = 0
        for t in taken:
            j = round((t - offset) * partitions / SLOTS) % partitions
            d = _gap(t, offset + steps[j])
            far, total = max(far, d), total + d
        if best is None or (far, total) < best[:2]:
            best = (far, total, offset)
    assert best is not None
    offset = best[2]
    ideal = [offset + s for s in steps]
    free = [True] * partitions
    for t in taken:
        j = round((t - offset) * partitions / SLOTS) % partitions
        # The nearest free one: the nearest itself unless a tie or rounding gave it away.
        near = sorted(((j + d) % partitions for d in range(-2, 3)), key=lambda i: _gap(t, ideal[i]))
        for i in near:
            if free[i]:
                free[i] = False
                break
    return [ideal[i] for i in range(partitions) if free[i]][:n_new]
