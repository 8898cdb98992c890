"""One bounded read of a deployment's observable state, for the metrics exporter.

A scrape reads, for every topic of the namespace and every consumer group partstream knows
(``GroupAdmin.list``):

1. the names: the topics set and the groups set (with one EXISTS per group);
2. the metadata, one pipelined round per node: each topic's meta hash, each group's
   ``describe`` (admin.lua, one atomic read: state, epoch, members, subscribed topics);
3. the partitions, one pipelined round per node (:func:`partitions._admin.lag.read_offsets`): per
   partition XINFO STREAM (length, first and last entry, entries added), XINFO GROUPS, XLEN
   and TIME, per group and partition one XPENDING summary, per dead-letter stream an XRANGE
   of at most ``DeadLetterTally.read_limit`` entries not seen before and an XLEN;
4. at most one more pipelined round per node, only where round 3 could not tell: the first
   entry after a group's last-delivered id (``XRANGE ... COUNT 1``), a stream's first entry
   for a group that never read it, and lag.lua's bounded count where the server's lag is NULL.

So the work per scrape is a fixed number of commands per partition and per (group,
partition), none of which scans a stream beyond ``count_limit`` entries (lag.lua, only when
the server's own lag is NULL) and the tally's ``read_limit`` new dead letters. Groups are
those partstream created or a member joined (other clients' stream groups are not listed),
over the partitions of the topics their members subscribed to: the same set
``partstream group describe`` shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from partitions._admin.deadletter import DeadLetterTally
from partitions._admin.groups import GroupAdmin
from partitions._admin.lag import Command, PartitionOffset, missing_function, read_offsets
from partitions._admin.topics import TopicAdmin, TopicMeta, meta_from_hash
from partitions._base.errors import UnknownGroupError, translate
from partitions._base.functions import function_name
from partitions._base.records import id_timestamp
from partitions._base.replies import StreamInfo, parse_describe, stream_info_from_reply
from partitions._base.types import GroupDescription
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key

# lag.lua's count per partition in a scrape, where the server's lag is NULL (after a seek):
# beyond it the lag is a lower bound. Lower than `group describe`'s: a scrape repeats.
SCRAPE_COUNT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One partition stream as a scrape saw it."""

    topic: str
    partition: int
    length: int
    first_id: str | None
    last_id: str | None
    entries_added: int | None  # every entry ever appended (a counter: trims keep it)

    @property
    def first_timestamp_ms(self) -> int | None:
        return None if self.first_id is None else id_timestamp(self.first_id)

    @property
    def last_timestamp_ms(self) -> int | None:
        return None if self.last_id is None else id_timestamp(self.last_id)


@dataclass(frozen=True, slots=True)
class GroupState:
    """One consumer group as a scrape saw it: its coordinator state and its offsets."""

    group: str
    state: str
    epoch: int
    members: int  # members in the group, not counting static members that left for now
    offsets: tuple[PartitionOffset, ...]


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    """Entries of one partition's dead-letter stream with one (group, reason)."""

    topic: str
    partition: int
    group: str
    reason: str
    entries: int


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape read (see the module docstring for how)."""

    time_ms: int  # when it started, by this process's clock
    duration_s: float
    topics: tuple[TopicMeta, ...]
    partitions: tuple[PartitionState, ...]
    groups: tuple[GroupState, ...]
    dead_letters: tuple[DeadLetterCount, ...]


def _describe_all(conn: Connection, groups: list[str]) -> list[GroupDescription]:
    """Every group's describe, pipelined per node (a group deleted meanwhile is left out)."""
    k = conn.keys
    cmds: list[Command] = []
    for g in groups:
        keys = k.group_keys(g)
        cmds.append((keys[0], (b"FCALL", function_name("admin"), len(keys), *keys, "describe")))
    out = []
    for g, reply in zip(groups, execute_per_key(conn, cmds, "describing groups"), strict=True):
        try:
            if isinstance(reply, Exception):
                if not missing_function(reply):
                    raise reply
                out.append(GroupAdmin(conn).describe(g))  # loads the library
            else:
                out.append(parse_describe(reply, g))
        except UnknownGroupError:
            continue
    return out


def _metas(conn: Connection, names: list[str]) -> list[TopicMeta]:
    keys = [conn.keys.topic_meta(t) for t in names]
    replies = execute_per_key(conn, [(key, ("HGETALL", key)) for key in keys], "reading topics")
    out = []
    for name, raw in zip(names, replies, strict=True):
        if isinstance(raw, Exception):
            raise raw
        if raw:  # empty: deleted since it was listed
            out.append(meta_from_hash(name, raw))
    return out


def scrape(
    conn: Connection,
    tally: DeadLetterTally | None = None,
    *,
    count_limit: int = SCRAPE_COUNT_LIMIT,
) -> Scrape:
    """Read the deployment's state once. ``tally`` keeps dead-letter counts between scrapes
    (a new one starts from the streams' first entries)."""
    start, clock = time.monotonic(), int(time.time() * 1000)
    tally = tally or DeadLetterTally()
    k = conn.keys
    metas = _metas(conn, TopicAdmin(conn).names())
    descs = _describe_all(conn, GroupAdmin(conn).list())
    parts = [(m.name, p) for m in metas for p in range(m.partitions)]
    streams = [k.stream(t, p) for t, p in parts]
    extra: list[Command] = [(s, (b"XINFO", "STREAM", s)) for s in streams]
    dlq_keys = [k.dlq(t, p) for t, p in parts]
    for key in dlq_keys:
        extra += tally.commands(key)
    wanted = [(d.group, t, p) for d in descs for t, n in sorted(d.topics.items()) for p in range(n)]
    offsets, replies = read_offsets(conn, wanted, extra, count_limit=count_limit)

    states = []
    for (t, p), reply in zip(parts, replies[: len(parts)], strict=True):
        info: StreamInfo | None = None
        if isinstance(reply, Exception):
            if "no such key" not in str(reply).lower():
                raise translate(reply, f"reading {t}/{p}")
        else:
            info = stream_info_from_reply(reply)
        if info is None:
            states.append(PartitionState(t, p, 0, None, None, None))
        else:
            states.append(
                PartitionState(t, p, info.length, info.first_id, info.last_id, info.entries_added)
            )
    dead: list[DeadLetterCount] = []
    rest = replies[len(parts) :]
    for i, ((t, p), key) in enumerate(zip(parts, dlq_keys, strict=True)):
        entries, length = rest[2 * i], rest[2 * i + 1]
        for r in (entries, length):
            if isinstance(r, Exception):
                raise r
        counts = tally.update(key, entries, int(length))
        dead += [DeadLetterCount(t, p, g, r, n) for (g, r), n in sorted(counts.items())]
    tally.forget(set(dlq_keys))

    groups, i = [], 0
    for d in descs:
        n = sum(d.topics.values())
        members = sum(1 for m in d.members if not m.left)
        groups.append(GroupState(d.group, d.state, d.epoch, members, tuple(offsets[i : i + n])))
        i += n
    return Scrape(
        clock,
        time.monotonic() - start,
        tuple(metas),
        tuple(states),
        tuple(groups),
        tuple(dead),
    )
