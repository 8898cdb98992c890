"""Group administration: create, alter, inspect, list and delete consumer groups, and the
operations on a group's positions: seek (plan, then execute), lag, and reclaim stuck entries.

Every change to a group's state is one atomic server-side script (admin.lua); ``describe``
is one atomic read, so its members, epochs and owners are mutually consistent.

A group's position on a partition is its stream consumer group's last-delivered id. A seek
moves it with XGROUP SETID (``seek.lua``), forgetting the group's pending entries there, so
the group then reads every entry after the new id exactly once. :func:`plan_group_seek` only
reads; :func:`execute_group_seek` changes the server, and only while the group has no live
member. Lag of a partition = entries not yet delivered to the group + entries delivered but
not acked (pending), and lag in time = the age of the oldest of those entries; both are read
by :mod:`partitions._admin.lag` (see there for exactly how). Every operation returns a frozen
dataclass (``to_dict()`` for JSON).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis.exceptions as rex

from partitions._admin.lag import PartitionOffset, read_offsets
from partitions._admin.offsets import target_id
from partitions._admin.topics import TopicAdmin, read_layouts
from partitions._base.durability import Durability
from partitions._base.errors import (
    ConfigError,
    ConflictError,
    GroupExistsError,
    PartstreamError,
    StateLostError,
    UnknownGroupError,
    translate,
)
from partitions._base.failover import budget, repeatable_steps, ride_steps
from partitions._base.functions import FCall
from partitions._base.keys import validate_name
from partitions._base.replies import (
    GroupStreamInfo,
    error_code,
    group_infos_from_reply,
    group_topics,
    parse_describe,
    raise_for_status,
    script_status,
    settings_from_reply,
    text,
)
from partitions._base.settings import GroupSettings
from partitions._base.types import GroupDescription
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key


class GroupAdmin:
    """Administers the consumer groups of a connection's namespace, like :class:`TopicAdmin`.
    Thread-safe (stateless over the connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.client = conn.client
        self.keys = conn.keys
        self.functions = conn.functions

    def _admin(self, group: str, *args: Any, durability: Durability | None = None) -> list[Any]:
        reply: list[Any] = self.functions.call(
            "admin",
            self.keys.group_keys(group),
            list(args),
            context=f"{args[0]} group {group}",
            durability=durability,
        )
        raise_for_status(reply, group)
        return reply

    def create(
        self, group: str, settings: GroupSettings | None = None, *, exist_ok: bool = False
    ) -> bool:
        """Create ``group`` with ``settings`` (default: the defaults). True if it was created.

        An existing group keeps its stored settings: with ``exist_ok`` nothing happens, else
        ConfigError (use :meth:`alter`).
        """
        validate_name(group, "group")
        settings = settings or GroupSettings()
        reply = self._admin(group, "create", *settings.to_fields(), durability=settings.durability)
        self._register(group)
        if script_status(reply) == "EXISTS":
            if exist_ok:
                return False
            raise GroupExistsError(f"group {group!r} already exists; use alter to change it")
        return True

    def _register(self, group: str) -> None:
        # Another slot than the group's keys: not part of the script, idempotent instead.
        try:
            self.client.sadd(self.keys.groups, group)
        except rex.RedisError as err:
            raise translate(err, f"registering group {group}") from err

    def get_settings(self, group: str) -> GroupSettings:
        """The group's stored settings; UnknownGroupError if it does not exist."""
        validate_name(group, "group")
        try:
            raw = self.client.hgetall(self.keys.group_cfg(group))
        except rex.RedisError as err:
            raise translate(err, f"reading group {group}") from err
        if not raw:
            raise UnknownGroupError(f"group {group!r} does not exist")
        return settings_from_reply(raw)

    def alter(self, group: str, **changes: Any) -> GroupSettings:
        """Change some settings (validated with the rest); a new assignor triggers a rebalance."""
        current = self.get_settings(group)
        updated = current.with_changes(**changes)
        self._admin(group, "alter", *updated.to_fields(), durability=updated.durability)
        return updated

    def describe(self, group: str) -> GroupDescription:
        """One consistent snapshot of the group; UnknownGroupError if it does not exist.
        Rides out a failover (a read: safe to repeat)."""
        validate_name(group, "group")
        call = FCall("admin", self.keys.group_keys(group), ["describe"], f"describe group {group}")
        steps = ride_steps(
            lambda: self.functions.fcall_steps(call, retry_for=0),
            budget(self.client),
            cluster=self.conn.is_cluster,
        )
        return parse_describe(self.functions.run(steps), group)

    def list(self) -> list[str]:
        """Names of the existing groups, sorted. Rides out a failover (reads only)."""

        def read() -> list[str]:
            names = sorted(text(n) for n in self.client.smembers(self.keys.groups))
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.exists(self.keys.group_cfg(name))
            return [name for name, ok in zip(names, pipe.execute(), strict=True) if ok]

        try:
            listed: list[str] = self.functions.run(repeatable_steps(self.client, read))
        except (rex.RedisError, rex.RedisClusterException) as err:
            raise translate(err, "listing groups") from err
        return listed

    def delete(self, group: str, *, force: bool = False) -> bool:
        """Delete the group: its coordinator state, and on every partition of its topics its
        stream consumer group (positions and pending entries), its marks and its fence, so a
        group re-created under the same name starts afresh, as after Kafka's delete-group.
        Refuses while live members remain unless forced. False if the group did not exist.
        """
        validate_name(group, "group")
        topics = self._topics(group)
        reply: list[Any] = self.functions.call(
            "admin", self.keys.group_keys(group), ["delete", "1" if force else "0"]
        )
        code = error_code(reply)
        if code == "UNKNOWN_GROUP":
            self._unregister(group)
            return False
        if code == "NOT_EMPTY":
            raise ConflictError(
                f"group {group!r} still has live members; stop them or use force=True",
                retriable=True,
            )
        raise_for_status(reply, group)
        self._drop_partition_state(group, topics)
        self._unregister(group)
        return int(reply[1]) > 0

    def _topics(self, group: str) -> dict[str, int]:
        """{topic: partitions} the group's members subscribed to (from its state hash)."""
        try:
            raw = self.client.hgetall(self.keys.group_state(group))
        except rex.RedisError as err:
            raise translate(err, f"reading group {group}") from err
        return group_topics(raw)

    def _drop_partition_state(self, group: str, topics: dict[str, int]) -> None:
        # Each command touches one partition's keys: fine on a cluster (no multi-slot call).
        layouts = read_layouts(self.conn, topics)
        pipe = self.client.pipeline(transaction=False)
        for topic, count in topics.items():
            lay = layouts[topic]
            for p in range(count):
                pipe.execute_command("XGROUP", "DESTROY", self.keys.stream(lay, p), group)
                pipe.hdel(self.keys.stream_groups(lay, p), group, f"{group}:reclaim")
                pipe.hdel(self.keys.fence(lay, p), group)
        try:
            pipe.execute(raise_on_error=False)  # a partition never written has no stream
        except rex.RedisError as err:
            raise translate(err, f"deleting group {group} from its partitions") from err

    def _unregister(self, group: str) -> None:
        try:
            self.client.srem(self.keys.groups, group)
        except rex.RedisError as err:
            raise translate(err, f"unregistering group {group}") from err


# -- positions: seek, lag, reclaim ---------------------------------------------------------
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
    topics = GroupAdmin(conn).describe(group).topics
    if not topics:
        raise ConfigError(f"group {group!r} has no topics yet; name one with --topic")
    return dict(sorted(topics.items()))


def _group_infos(
    conn: Connection, group: str, topics: dict[str, int]
) -> list[tuple[str, int, GroupStreamInfo | None]]:
    layouts = read_layouts(conn, topics)
    parts = [(t, p) for t, n in topics.items() for p in range(n)]
    keys = [conn.keys.stream(layouts[t], p) for t, p in parts]
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
    topics = _group_topics(conn, group, topic)
    wanted = [(group, t, p) for t, n in topics.items() for p in range(n)]
    return read_offsets(conn, wanted, layouts=read_layouts(conn, topics))[0]


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
            members = GroupAdmin(conn).describe(plan.group).members
        except PartstreamError:
            members = ()
        live = [m.member_id for m in members if not m.left]
        if live:
            raise ConflictError(
                f"group {plan.group!r} has {len(live)} live member(s); stop them first (or force)",
                retriable=True,
            )
    k = conn.keys
    counts: dict[str, int] = {}
    for s in plan.steps:
        counts[s.topic] = max(counts.get(s.topic, 0), s.partition + 1)
    layouts = read_layouts(conn, counts)
    for s in plan.steps:
        lay = layouts[s.topic]
        reply = conn.functions.call(
            "seek",
            [
                k.stream(lay, s.partition),
                k.fence(lay, s.partition),
                k.stream_groups(lay, s.partition),
            ],
            [plan.group, "", s.new, "1"],
            f"seeking {plan.group} on {s.topic}/{s.partition}",
        )
        if int(reply[0]) != 1:
            raise StateLostError(f"seek of {s.topic}/{s.partition} failed: {reply[1]!r}")
    return SeekPlan(plan.group, plan.to, plan.steps, executed=True)


# XPENDING IDLE counts stop here per partition (the owner still reclaims them all).
RECLAIM_COUNT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class PartitionReclaim:
    """One partition of a reclaim request."""

    topic: str
    partition: int
    stuck: int  # pending entries idle past the threshold (at most RECLAIM_COUNT_LIMIT)
    requested: bool  # a request was written (only where something is stuck)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReclaimResult:
    """What :func:`reclaim_now` found stuck and asked the owners to redeliver."""

    group: str
    min_idle_ms: int
    partitions: tuple[PartitionReclaim, ...]

    @property
    def stuck(self) -> int:
        return sum(p.stuck for p in self.partitions)

    @property
    def requested(self) -> int:
        """Partitions where a request was written."""
        return sum(p.requested for p in self.partitions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "min_idle_ms": self.min_idle_ms,
            "stuck": self.stuck,
            "requested": self.requested,
            "partitions": [p.to_dict() for p in self.partitions],
        }


def reclaim_now(
    conn: Connection, group: str, topic: str | None = None, min_idle_ms: int = 1000
) -> ReclaimResult:
    """Ask the owners to redeliver, on a read within about 100 ms (a steady owner's fast
    path looks for requests that often: ``_consumer.plans.ASKS_EVERY_S``), the group's
    entries pending longer than ``min_idle_ms`` ("reclaim stuck entries now"), on every
    partition of the group's topics (or of ``topic``).

    Nothing is claimed here: where such entries exist, field ``<group>:reclaim`` of the
    partition's groups hash (``Keys.stream_groups``, the partition's slot) is set to
    ``min_idle_ms``; the partition's current owner serves it inside its fenced read
    (``consume.lua``: one HGET), delivers those entries again in id order before new ones
    (delivery count + 1; past ``max_deliveries`` they are dead-lettered), then clears it.
    So only the owner delivers them (G holds); a partition without owner is served by its
    next owner after its takeover recovery. Safe to call any time, from any client.

    ``stuck`` counts pending entries idle past the threshold (XPENDING IDLE, at most
    :data:`RECLAIM_COUNT_LIMIT` per partition); a request is written only where something
    is stuck.
    """
    validate_name(group, "group")
    if isinstance(min_idle_ms, bool) or not isinstance(min_idle_ms, int) or min_idle_ms < 0:
        raise ConfigError(f"min_idle_ms must be an integer >= 0, got {min_idle_ms!r}")
    topics = _group_topics(conn, group, topic)
    layouts = read_layouts(conn, topics)
    parts = [(t, p) for t, n in topics.items() for p in range(n)]
    k = conn.keys
    streams = [k.stream(layouts[t], p) for t, p in parts]
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
    marks = [k.stream_groups(layouts[t], p) for t, p in parts]
    asks = [(m, ("HSET", m, field, min_idle_ms))
            for m, n in zip(marks, stuck, strict=True) if n]  # fmt: skip
    for reply in execute_per_key(conn, asks, f"requesting a reclaim for group {group}"):
        if isinstance(reply, Exception):
            raise reply
    rows = tuple(PartitionReclaim(t, p, n, n > 0) for (t, p), n in zip(parts, stuck, strict=True))
    return ReclaimResult(group, min_idle_ms, rows)


@dataclass(frozen=True, slots=True)
class GroupOverview:
    """A group's description with its lag per partition (``partstream group describe``)."""

    description: GroupDescription
    lag: GroupLag

    def to_dict(self) -> dict[str, Any]:
        """``GroupDescription.to_dict()`` with, per partition of the group's topics,
        ``last_delivered_id``, ``pending``, ``lag``, ``lag_exact``, ``lag_seconds`` and
        ``oldest_unacked_id``, and the group's ``total_lag`` and ``max_lag_seconds``.
        Partitions nobody owns are listed with ``owner`` None."""
        data = self.description.to_dict()
        owners = {(p.topic, p.partition): p for p in self.description.partitions}
        rows = []
        for off in self.lag.partitions:
            owner = owners.pop((off.topic, off.partition), None)
            row = owner.to_dict() if owner else _unowned(off.topic, off.partition)
            row.update(
                last_delivered_id=off.last_delivered_id,
                pending=off.pending,
                lag=off.lag,
                lag_exact=off.exact,
                lag_seconds=off.lag_seconds,
                oldest_unacked_id=off.oldest_unacked_id,
            )
            rows.append(row)
        rows += [p.to_dict() for p in owners.values()]  # topics the group no longer lists
        data["partitions"] = rows
        data["total_lag"] = self.lag.total_lag
        data["max_lag_seconds"] = self.lag.max_lag_seconds
        return data


def _unowned(topic: str, partition: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "owner": None, "token": None, "epoch": None}


def describe_with_lag(conn: Connection, group: str) -> GroupOverview:
    """The group's description and its lag per partition of its topics."""
    desc = GroupAdmin(conn).describe(group)
    offsets = group_offsets(conn, group) if desc.topics else []
    return GroupOverview(desc, GroupLag(group, tuple(offsets)))
