"""Seek targets: the grammar of "a position in a partition" a group or a consumer seeks to.

A group's position on a partition is its stream consumer group's last-delivered id; a target
resolves to the id to set it to. The group operations that use it (plan and execute a seek,
lag, reclaim) are in :mod:`partitions._admin.groups`.
"""

from __future__ import annotations

from partitions._admin.lag import LAG_COUNT_LIMIT as LAG_COUNT_LIMIT
from partitions._admin.lag import PartitionOffset as PartitionOffset
from partitions._base.errors import ConfigError
from partitions._base.records import parse_id

_MAX_SEQ = 18446744073709551615


def time_id(ms: int) -> str:
    """The last-delivered id that makes a group read from time ``ms`` on (ms-0 minus one)."""
    return "0" if ms <= 0 else f"{ms - 1}-{_MAX_SEQ}"


def target_id(to: str | int) -> str:
    """Resolve a seek target: 'earliest' -> '0', 'latest' -> '$', an int or '@EPOCH_MS' ->
    just before that time, or an entry id ('ms' or 'ms-seq'; reading continues after it)."""
    if isinstance(to, bool):
        raise ConfigError(f"not a seek target: {to!r}")
    if isinstance(to, int):
        return time_id(to)
    if to == "earliest":
        return "0"
    if to == "latest":
        return "$"
    if to.startswith("@"):
        if not to[1:].isdigit():
            raise ConfigError(f"a time target is @EPOCH_MS, got {to!r}")
        return time_id(int(to[1:]))
    try:
        ms, seq = parse_id(to)
    except ValueError:
        raise ConfigError(
            f"seek target {to!r} is not earliest, latest, @EPOCH_MS or an entry id"
        ) from None
    return f"{ms}-{seq}"
