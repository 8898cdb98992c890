"""Lag of consumer groups on partitions, in entries and in time, for many groups at once.

For a group on one partition:

* ``lag``: entries the group has not acknowledged = entries after its last-delivered id
  (undelivered) + entries delivered but not acked (pending). The server's own ``lag`` (XINFO
  GROUPS) is an estimate: when it is NULL (after a seek or deletions) the entries after the
  last-delivered id are counted by ``lag.lua``, up to :data:`LAG_COUNT_LIMIT` (beyond it the
  lag is a lower bound, ``exact=False``). A positive one is checked: the first entry after
  the last-delivered id is read, and none there means nothing is undelivered; one up to
  :data:`RECOUNT_BELOW` is counted too. After deletions the server's counter can stay too
  high for good (Redis 7.0's XREADGROUP counts a read past tombstones as one entry:
  redis/redis#13337, valkey-io/valkey#1951; partstream's producer deletes the duplicates it
  undoes after a retry), and a small lag is where a wrong one misleads: a drain that never
  ends, an alert that never clears. A group that never read the partition lags by the whole
  stream.
* ``lag_ms``: the age of the oldest entry the group has not acknowledged, by the server's
  clock (``TIME`` on the node serving the partition) minus that entry's id time. The oldest
  unacked entry is the older of the oldest pending entry (XPENDING's summary) and the first
  entry after the last-delivered id (``XRANGE (id + COUNT 1``); 0 when caught up.

:func:`read_offsets` reads any number of (group, topic, partition) triples in one pipelined
round per node (XINFO GROUPS, XLEN and TIME per partition, one XPENDING summary per triple)
and at most one more, only for what the first could not tell: the first entry after the
last-delivered id where the server's lag is not 0 (one ``XRANGE ... COUNT 1``), the first
entry of a partition a group never read, and the ``lag.lua`` count where the server's lag is
NULL or small. No command scans a stream except that bounded count. Callers may add their own
single-key commands to the first round (the exporter does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from partitions._base.errors import StateLostError, translate
from partitions._base.functions import function_name, is_missing
from partitions._base.keys import TopicLayout
from partitions._base.records import id_timestamp, parse_id
from partitions._base.replies import (
    GroupStreamInfo,
    PendingSummary,
    entry_ids,
    group_infos_from_reply,
    pending_summary_from_reply,
    time_ms_from_reply,
)
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key

# Counting undelivered entries stops here; beyond it lag is a lower bound (exact=False).
LAG_COUNT_LIMIT = 1_000_000
# A server lag from 1 to this many entries is counted (lag.lua: one page of XRANGE), not
# trusted: the counter can stay too high after deletions (see the module's docstring).
RECOUNT_BELOW = 1_000

Command = tuple[str | bytes, Sequence[Any]]  # (key that routes it, command arguments)


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    """Where a group is on one partition, and how far behind, in entries and in time."""

    topic: str
    partition: int
    last_delivered_id: str | None  # None: the group never read this partition
    pending: int
    lag: int  # undelivered + pending
    exact: bool  # False when counting stopped at LAG_COUNT_LIMIT
    oldest_unacked_id: str | None = None  # None when the group is caught up
    lag_ms: int = 0  # server time minus the oldest unacked entry's time; 0 when caught up
    entries_read: int | None = None  # entries delivered to the group (None: server unsure)

    @property
    def lag_seconds(self) -> float:
        return self.lag_ms / 1000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lag_seconds"] = self.lag_seconds
        return d


def older(a: str | None, b: str | None) -> str | None:
    """The older of two stream ids (None stands for no entry)."""
    if a is None or b is None:
        return a if b is None else b
    return a if parse_id(a) <= parse_id(b) else b


def age_ms(now_ms: int, stream_id: str | None) -> int:
    """How old the entry ``stream_id`` is at ``now_ms`` (0 for no entry, never negative)."""
    return 0 if stream_id is None else max(0, now_ms - id_timestamp(stream_id))


def needs_head(info: GroupStreamInfo, pending: PendingSummary) -> bool:
    """Whether the first entry after the last-delivered id must be read: whenever the
    server's lag is positive (none there proves its counter stale: nothing is undelivered),
    and where it is NULL if no pending entry is older than the last-delivered id (to know the
    oldest unacked entry; a pending entry is normally at or before it, so it is older)."""
    if info.lag == 0:
        return False
    if info.lag is not None:
        return True
    return pending.min_id is None or parse_id(pending.min_id) > parse_id(info.last_delivered_id)


def needs_count(info: GroupStreamInfo, recount_below: int = RECOUNT_BELOW) -> bool:
    """Whether lag.lua must count the entries after the last-delivered id: where the
    server's lag is NULL, or positive and at most ``recount_below`` (it may be stale)."""
    return info.lag is None or 0 < info.lag <= recount_below


def offset_of(
    topic: str,
    partition: int,
    info: GroupStreamInfo | None,
    pending: PendingSummary,
    *,
    length: int,
    now_ms: int,
    first_id: str | None = None,
    head_id: str | None = None,
    counted: tuple[int, bool] | None = None,
) -> PartitionOffset:
    """A group's PartitionOffset from what was read (pure).

    ``first_id``: the partition's first entry (used when the group never read it);
    ``head_id``: the first entry after the last-delivered id, None for none (read when
    :func:`needs_head`: always where the server's lag is positive);
    ``counted``: lag.lua's ``(undelivered, exact)`` (when :func:`needs_count`), which
    stands over the server's lag.
    """
    if info is None:
        oldest = first_id if length else None
        return PartitionOffset(
            topic, partition, None, 0, length, True, oldest, age_ms(now_ms, oldest)
        )
    exact = True
    if counted is not None:
        undelivered, exact = counted
    elif info.lag is None:
        raise ValueError("the server's lag is NULL: pass lag.lua's count")
    elif head_id is None:
        undelivered = 0  # nothing after the last-delivered id, whatever the counter says
    else:
        undelivered = max(1, min(info.lag, length))  # the server's estimate, within bounds
    oldest = older(pending.min_id, head_id)
    if undelivered == 0 and info.pending == 0:
        oldest = None
    return PartitionOffset(
        topic,
        partition,
        info.last_delivered_id,
        info.pending,
        undelivered + info.pending,
        exact,
        oldest,
        age_ms(now_ms, oldest),
        info.entries_read if info.lag == undelivered else None,
    )


def missing_function(reply: Any) -> bool:
    """A reply saying the node does not have partstream's function library (a new node, a
    server restarted without persistence)."""
    return isinstance(reply, Exception) and is_missing(reply)


def _ok(reply: Any, context: str) -> Any:
    if isinstance(reply, Exception):
        raise translate(reply, context)
    return reply


def read_offsets(
    conn: Connection,
    wanted: Sequence[tuple[str, str, int]],
    extra: Sequence[Command] = (),
    *,
    layouts: Mapping[str, TopicLayout],
    count_limit: int = LAG_COUNT_LIMIT,
) -> tuple[list[PartitionOffset], list[Any]]:
    """PartitionOffsets of ``wanted`` ``(group, topic, partition)`` triples, in order, and
    the replies of the ``extra`` commands (sent in the first round; errors in place).
    ``layouts`` names each topic's keys (:func:`partitions._admin.topics.read_layouts`);
    ``count_limit`` bounds lag.lua's count where the server's lag is NULL."""
    k = conn.keys
    streams = list(dict.fromkeys((t, p) for _, t, p in wanted))
    key_of = {(t, p): k.stream(layouts[t], p) for t, p in streams}
    first: list[Command] = []
    for t, p in streams:
        s = key_of[(t, p)]
        first += [(s, (b"XINFO", "GROUPS", s)), (s, (b"XLEN", s)), (s, (b"TIME",))]
    first += [(key_of[(t, p)], (b"XPENDING", key_of[(t, p)], g)) for g, t, p in wanted]
    replies = execute_per_key(conn, [*first, *extra], "reading group positions")
    ours, extra_replies = replies[: len(first)], replies[len(first) :]

    infos: dict[tuple[str, int], dict[str, GroupStreamInfo]] = {}
    lengths: dict[tuple[str, int], int] = {}
    now: dict[tuple[str, int], int] = {}
    for i, (t, p) in enumerate(streams):
        groups, length, clock = ours[3 * i : 3 * i + 3]
        if isinstance(groups, Exception) and "no such key" in str(groups).lower():
            groups = []
        infos[(t, p)] = {g.name: g for g in group_infos_from_reply(_ok(groups, f"{t}/{p}"))}
        lengths[(t, p)] = int(_ok(length, f"length of {t}/{p}"))
        now[(t, p)] = time_ms_from_reply(_ok(clock, "server time"))
    pendings: list[PendingSummary] = []
    for (g, t, p), reply in zip(wanted, ours[3 * len(streams) :], strict=True):
        if isinstance(reply, StateLostError):  # NOGROUP: the group never read it
            pendings.append(PendingSummary(0, None, None))
        else:
            pendings.append(pending_summary_from_reply(_ok(reply, f"pending of {g} on {t}/{p}")))

    # The second round: only what the first could not tell.
    second: list[Command] = []
    heads: dict[int, int] = {}
    counts: dict[int, int] = {}
    firsts: dict[tuple[str, int], int] = {}
    for i, ((g, t, p), pend) in enumerate(zip(wanted, pendings, strict=True)):
        info, s = infos[(t, p)].get(g), key_of[(t, p)]
        if info is None:
            if lengths[(t, p)] and (t, p) not in firsts:
                firsts[(t, p)] = len(second)
                second.append((s, (b"XRANGE", s, "-", "+", "COUNT", 1)))
            continue
        if needs_count(info):
            counts[i] = len(second)
            fn = function_name("lag")
            second.append((s, (b"FCALL_RO", fn, 1, s, info.last_delivered_id, count_limit)))
        if needs_head(info, pend):
            heads[i] = len(second)
            second.append((s, (b"XRANGE", s, f"({info.last_delivered_id}", "+", "COUNT", 1)))
    late = execute_per_key(conn, second, "reading group positions") if second else []
    for i, j in counts.items():
        if missing_function(late[j]):
            # This call loads the library where this user may (else LibraryMissingError).
            g, t, p = wanted[i]
            info = infos[(t, p)][g]
            late[j] = conn.functions.call(
                "lag", [key_of[(t, p)]], [info.last_delivered_id, count_limit], "counting lag"
            )

    out: list[PartitionOffset] = []
    for i, ((g, t, p), pend) in enumerate(zip(wanted, pendings, strict=True)):
        info = infos[(t, p)].get(g)
        first_id = None
        if info is None and (t, p) in firsts:
            ids = entry_ids(_ok(late[firsts[(t, p)]], f"first entry of {t}/{p}"))
            first_id = ids[0] if ids else None
        head_id = None
        if i in heads:
            ids = entry_ids(_ok(late[heads[i]], f"next entry of {g} on {t}/{p}"))
            head_id = ids[0] if ids else None
        counted = None
        if i in counts:
            reply = _ok(late[counts[i]], f"lag of {g} on {t}/{p}")
            counted = (int(reply[0]), bool(int(reply[1])))
        offset = offset_of(
            t, p, info, pend, length=lengths[(t, p)], now_ms=now[(t, p)],
            first_id=first_id, head_id=head_id, counted=counted,
        )  # fmt: skip
        out.append(offset)
    return out, extra_replies
