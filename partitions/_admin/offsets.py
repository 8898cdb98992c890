"""Group positions per partition: seek and reset plans, and lag.

A group's position on a partition is its stream consumer group's last-delivered id. A seek
moves it with XGROUP SETID (``seek.lua``), forgetting the group's pending entries there, so
the group then reads every entry after the new id exactly once. ``plan_group_seek`` only
reads; :func:`execute` changes the server, and only while the group has no live member.

Lag of a partition = entries not yet delivered to the group + entries delivered but not acked
(pending), and lag in time = the age of the oldest of those entries; both are read by
:mod:`partitions._admin.lag` (see there for exactly how).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from coordinator.group import GroupAdmin
from partitions._admin.lag import LAG_COUNT_LIMIT as LAG_COUNT_LIMIT
from partitions._admin.lag import PartitionOffset as PartitionOffset
from partitions._admin.lag import read_offsets
from partitions._admin.topics import TopicAdmin
from partitions._base.errors import ConfigError, PartstreamError, StateLostError, translate
from partitions._base.keys import validate_name
from partitions._base.records import parse_id
from partitions._base.replies import GroupStreamInfo, group_infos_from_reply
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key

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


@dataclass(frozen=True, slots=True)
class SeekStep:
    """One partition of a seek plan."""

    topic: str
    partition: int
    current: str | None  # last-delivered id now (None: the group never read it)
    new: str  # the id SETID will use ('0', '$' or an explicit id)
    pending: int  # entries the seek forgets (acked without being processed again)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SeekPlan:
    """What a group seek would change, per partition. Nothing changes until executed."""

    group: str
    to: str
    steps: tuple[SeekStep, ...]
    executed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "to": self.to,
            "executed": self.executed,
            "partitions": [s.to_dict() for s in self.steps],
        }


def _group_topics(conn: Connection, group: str, topic: str | None) -> dict[str, int]:
    if topic is not None:
        return {topic: TopicAdmin(conn).get(topic).partitions}
    topics = GroupAdmin(conn.client, conn.keys).describe(group).topics
    if not topics:
        raise ConfigError(f"group {group!r} has no topics yet; name one with --topic")
    return dict(sorted(topics.items()))


def _group_infos(
    conn: Connection, group: str, topics: dict[str, int]
) -> list[tuple[str, int, GroupStreamInfo | None]]:
    parts = [(t, p) for t, n in topics.items() for p in range(n)]
    keys = [conn.keys.stream(t, p) for t, p in parts]
    replies = execute_per_key(
        conn, [(k, ("XINFO", "GROUPS", k)) for k in keys], f"reading positions of group {group}"
    )
    out: list[tuple[str, int, GroupStreamInfo | None]] = []
    for (t, p), reply in zip(parts, replies, strict=True):
        info = None
        if isinstance(reply, Exception):
            if "no such key" not in str(reply).lower():
                raise translate(reply, f"reading positions of {t}/{p}")
        else:
            info = next((g for g in group_infos_from_reply(reply) if g.name == group), None)
        out.append((t, p, info))
    return out


def group_offsets(conn: Connection, group: str, topic: str | None = None) -> list[PartitionOffset]:
    """Per partition of the group's topics (or of ``topic``): position, pending, lag in
    entries and in time (one pipelined read per node, see
    :func:`partitions._admin.lag.read_offsets`)."""
    validate_name(group, "group")
    wanted = [(group, t, p) for t, n in _group_topics(conn, group, topic).items() for p in range(n)]
    return read_offsets(conn, wanted)[0]


def total_lag(offsets: list[PartitionOffset]) -> int:
    return sum(o.lag for o in offsets)


@dataclass(frozen=True, slots=True)
class GroupLag:
    """Lag of a group: per partition and in total."""

    group: str
    partitions: tuple[PartitionOffset, ...]

    @property
    def total_lag(self) -> int:
        return total_lag(list(self.partitions))

    @property
    def max_lag_seconds(self) -> float:
        """The age of the oldest entry the group has not acked, over all its partitions."""
        return max((p.lag_seconds for p in self.partitions), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "total_lag": self.total_lag,
            "max_lag_seconds": self.max_lag_seconds,
            "lag": [p.to_dict() for p in self.partitions],
        }


def group_lag(conn: Connection, group: str, topic: str | None = None) -> GroupLag:
    """The group's lag per partition of its topics (or of ``topic``) and in total."""
    return GroupLag(group, tuple(group_offsets(conn, group, topic)))


@dataclass(frozen=True, slots=True)
class LagCheck:
    """A group's lag against bounds: ``ok`` unless a bound given is exceeded."""

    lag: GroupLag
    max_lag: int | None  # bound on the total lag in entries (None: not checked)
    max_lag_seconds: float | None  # bound on the oldest unacked entry's age

    @property
    def violations(self) -> list[str]:
        out = []
        if self.max_lag is not None and self.lag.total_lag > self.max_lag:
            out.append(f"total lag {self.lag.total_lag} > {self.max_lag}")
        if self.max_lag_seconds is not None and self.lag.max_lag_seconds > self.max_lag_seconds:
            out.append(f"lag {self.lag.max_lag_seconds:.3f} s > {self.max_lag_seconds:g} s")
        return out

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.lag.to_dict(),
            "ok": self.ok,
            "max_lag": self.max_lag,
            "max_lag_seconds_allowed": self.max_lag_seconds,
            "violations": self.violations,
        }


def check_lag(
    conn: Connection,
    group: str,
    *,
    max_lag: int | None = None,
    max_lag_seconds: float | None = None,
    topic: str | None = None,
) -> LagCheck:
    """The group's lag checked against a bound on entries and/or on time (for alerting from
    cron or CI: ``partstream group lag GROUP --max-lag N --max-lag-seconds S``)."""
    for name, bound in (("max_lag", max_lag), ("max_lag_seconds", max_lag_seconds)):
        if bound is not None and (isinstance(bound, bool) or bound < 0):
            raise ConfigError(f"{name} must be >= 0, got {bound!r}")
    return LagCheck(group_lag(conn, group, topic), max_lag, max_lag_seconds)


def plan_group_seek(
    conn: Connection, group: str, to: str | int, topic: str | None = None
) -> SeekPlan:
    """Plan moving ``group`` to ``to`` on every partition of its topics (or of ``topic``).

    Reads only. ``to``: 'earliest', 'latest', an entry id, or a time (int or '@EPOCH_MS')."""
    validate_name(group, "group")
    new = target_id(to)
    steps = [
        SeekStep(t, p, info.last_delivered_id if info else None, new, info.pending if info else 0)
        for t, p, info in _group_infos(conn, group, _group_topics(conn, group, topic))
    ]
    return SeekPlan(group, str(to), tuple(steps))


def execute_group_seek(conn: Connection, plan: SeekPlan, *, force: bool = False) -> SeekPlan:
    """Apply a plan: SETID on each partition (creating the group there if it is missing —
    the explicit decision after a StateLostError). Refuses while the group has live members
    (their reads would race the move) unless ``force``."""
    if not force:
        try:
            members = GroupAdmin(conn.client, conn.keys).describe(plan.group).members
        except PartstreamError:
            members = ()
        live = [m.member_id for m in members if not m.left]
        if live:
            raise ConfigError(
                f"group {plan.group!r} has {len(live)} live member(s); stop them first (or force)"
            )
    k = conn.keys
    for s in plan.steps:
        reply = conn.functions.call(
            "seek",
            [
                k.stream(s.topic, s.partition),
                k.fence(s.topic, s.partition),
                k.stream_groups(s.topic, s.partition),
            ],
            [plan.group, "", s.new, "1"],
            f"seeking {plan.group} on {s.topic}/{s.partition}",
        )
        if int(reply[0]) != 1:
            raise StateLostError(f"seek of {s.topic}/{s.partition} failed: {reply[1]!r}")
    return SeekPlan(plan.group, plan.to, plan.steps, executed=True)


execute = execute_group_seek


# XPENDING IDLE counts stop here per partition (the owner still reclaims them all).
RECLAIM_COUNT_LIMIT = 10_000


def reclaim_now(
    conn: Connection, group: str, topic: str | None = None, min_idle_ms: int = 1000
) -> dict[str, Any]:
    """Ask the owners to redeliver, on their next read, the group's entries pending longer
    than ``min_idle_ms`` ("reclaim stuck entries now"), on every partition of the group's
    topics (or of ``topic``).

    Nothing is claimed here: where such entries exist, field ``<group>:reclaim`` of the
    partition's groups hash (``Keys.stream_groups``, the partition's slot) is set to
    ``min_idle_ms``; the partition's current owner serves it inside its fenced read
    (``consume.lua``: one HGET), delivers those entries again in id order before new ones
    (delivery count + 1; past ``max_deliveries`` they are dead-lettered), then clears it.
    So only the owner delivers them (G holds); a partition without owner is served by its
    next owner after its takeover recovery. Safe to call any time, from any client.

    Returns ``{"group", "min_idle_ms", "stuck", "requested", "partitions": [{"topic",
    "partition", "stuck", "requested"}]}``: ``stuck`` counts pending entries idle past the
    threshold (XPENDING IDLE, at most :data:`RECLAIM_COUNT_LIMIT` per partition);
    ``requested`` says whether a request was written (only where something is stuck).
    """
    validate_name(group, "group")
    if isinstance(min_idle_ms, bool) or not isinstance(min_idle_ms, int) or min_idle_ms < 0:
        raise ConfigError(f"min_idle_ms must be an integer >= 0, got {min_idle_ms!r}")
    parts = [(t, p) for t, n in _group_topics(conn, group, topic).items() for p in range(n)]
    k = conn.keys
    streams = [k.stream(t, p) for t, p in parts]
    pending = execute_per_key(
        conn,
        [
            (s, (b"XPENDING", s, group, "IDLE", min_idle_ms, "-", "+", RECLAIM_COUNT_LIMIT))
            for s in streams
        ],
        f"reading pending entries of group {group}",
    )
    stuck: list[int] = []
    for reply in pending:
        if isinstance(reply, StateLostError):  # NOGROUP: the group never read it
            reply = None
        elif isinstance(reply, Exception):
            raise reply
        stuck.append(len(reply) if reply else 0)
    field = f"{group}:reclaim"
    asks = [(k.stream_groups(t, p), ("HSET", k.stream_groups(t, p), field, min_idle_ms))
            for (t, p), n in zip(parts, stuck, strict=True) if n]  # fmt: skip
    for reply in execute_per_key(conn, asks, f"requesting a reclaim for group {group}"):
        if isinstance(reply, Exception):
            raise reply
    rows = [
        {"topic": t, "partition": p, "stuck": n, "requested": n > 0}
        for (t, p), n in zip(parts, stuck, strict=True)
    ]
    return {
        "group": group,
        "min_idle_ms": min_idle_ms,
        "stuck": sum(stuck),
        "requested": len(asks),
        "partitions": rows,
    }


def describe_with_lag(conn: Connection, group: str) -> dict[str, Any]:
    """``GroupDescription.to_dict()`` plus, per partition of the group's topics,
    ``last_delivered_id``, ``pending``, ``lag``, ``lag_seconds`` and ``oldest_unacked_id``,
    and the group's ``total_lag`` and ``max_lag_seconds``.
    Partitions nobody owns are listed with ``owner`` None."""
    desc = GroupAdmin(conn.client, conn.keys).describe(group)
    data = desc.to_dict()
    owners = {(p["topic"], p["partition"]): p for p in data["partitions"]}
    offsets = group_offsets(conn, group) if desc.topics else []
    rows = []
    for off in offsets:
        row = owners.pop(
            (off.topic, off.partition),
            {
                "topic": off.topic,
                "partition": off.partition,
                "owner": None,
                "token": None,
                "epoch": None,
            },
        )
        row.update(
            last_delivered_id=off.last_delivered_id,
            pending=off.pending,
            lag=off.lag,
            lag_exact=off.exact,
            lag_seconds=off.lag_seconds,
            oldest_unacked_id=off.oldest_unacked_id,
        )
        rows.append(row)
    rows += owners.values()  # owned partitions of topics the group no longer lists
    data["partitions"] = rows
    data["total_lag"] = total_lag(offsets)
    data["max_lag_seconds"] = max((o.lag_seconds for o in offsets), default=0.0)
    return data
