"""One bounded read of a deployment's observable state, for the metrics exporter.

A scrape reads every topic of the namespace and every consumer group partstream knows (the
groups set: groups partstream created or a member joined; other clients' stream groups are
not listed), over the partitions of the topics their members subscribed to: the set
``partstream group describe`` shows.

**One pipelined round per node.** A :class:`Scraper` remembers the topics and groups of its
last scrape, so it can send everything at once, each command on the node of its key:

* the topics set and the groups set (SMEMBERS), each known topic's meta hash (HGETALL);
* per known group, ``FCALL_RO scrape group``: the coordinator's describe (state, epoch,
  members, subscribed topics), read-only;
* per partition, ``FCALL_RO scrape partition`` (partitions/_telemetry/scrape.lua), which reads
  server-side everything the partition's series need: XINFO STREAM (length, first and last
  entry, entries added), XINFO GROUPS, TIME, and per group its XPENDING summary, the first
  entry after its last-delivered id and, only where the server's lag is NULL, the bounded
  count; plus the dead-letter stream's new entries (at most ``DeadLetterTally.read_limit``)
  and its length.

What that round shows to be new (a topic, a group, a partition, a group's new subscription)
is read in a further round, only for it: the first scrape takes three (names, metadata,
partitions), and so does the one after a topic is created; a scrape of an unchanged
deployment takes one. A node missing the function library gets it loaded (where the user
may) and its commands are sent again. So the work per scrape is a fixed number of commands
per partition and per (group, partition), none of which scans a stream beyond
``count_limit`` entries or reads more than the tally's ``read_limit`` new dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from partitions._admin.deadletter import DeadLetterTally
from partitions._admin.lag import (
    RECOUNT_BELOW,
    Command,
    PartitionOffset,
    missing_function,
    offset_of,
)
from partitions._admin.topics import TopicMeta, meta_from_hash
from partitions._base.errors import PartstreamError, UnknownGroupError, translate
from partitions._base.functions import function_name
from partitions._base.keys import TopicLayout
from partitions._base.records import id_timestamp
from partitions._base.replies import (
    PendingSummary,
    StreamInfo,
    group_infos_from_reply,
    parse_describe,
    pending_summary_from_reply,
    stream_info_from_reply,
    text,
    time_ms_from_reply,
)
from partitions._base.types import GroupDescription
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key, node_for_key

# lag.lua's count per partition in a scrape, where the server's lag is NULL (after a seek):
# beyond it the lag is a lower bound. Lower than `group describe`'s: a scrape repeats.
SCRAPE_COUNT_LIMIT = 100_000
# Rounds one scrape may take: names, then metadata, then partitions, once more after loading
# the library on a node that lacked it. Past that the deployment is changing faster than it
# can be read, and the scrape fails (the exporter serves partstream_up 0).
MAX_ROUNDS = 5


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


TopicPartitionKey = tuple[str, int]


class Scraper:
    """Scrapes one deployment again and again, one pipelined round per node while the
    topics and groups stay as they were (see the module docstring).

    Keeps between scrapes the names it saw and ``tally`` (the dead-letter counts). Not
    thread-safe: one collector owns it. ``rounds``: the rounds the last scrape took.
    """

    def __init__(
        self,
        conn: Connection,
        tally: DeadLetterTally | None = None,
        *,
        count_limit: int = SCRAPE_COUNT_LIMIT,
    ) -> None:
        self.conn = conn
        self.tally = tally or DeadLetterTally()
        self.count_limit = count_limit
        self.rounds = 0
        self._topics: list[str] = []
        self._groups: list[str] = []
        self._parts: dict[TopicPartitionKey, tuple[str, ...]] = {}
        self._layouts: dict[str, TopicLayout] = {}  # as the last scrape read them

    def scrape(self) -> Scrape:
        """Read the deployment's state once."""
        start, clock = time.monotonic(), int(time.time() * 1000)
        k = self.conn.keys
        names: tuple[list[str], list[str]] | None = None
        metas: dict[str, TopicMeta | None] = {}  # None: deleted since it was listed
        descs: dict[str, GroupDescription | None] = {}
        reads: dict[TopicPartitionKey, tuple[tuple[str, ...], Any]] = {}
        read_at: dict[TopicPartitionKey, str] = {}  # the stream key each read used
        topics, groups, parts = list(self._topics), list(self._groups), dict(self._parts)

        def layout_of(t: str, p: int) -> TopicLayout:
            # The metadata read in this scrape, else the last one's; a topic without any
            # (deleted, but a group still lists it) has the original tags.
            meta = metas.get(t)
            known = meta.layout if meta is not None else self._layouts.get(t)
            if known is not None and p < known.partitions:
                return known
            tags = known.tags if known is not None else ()
            return TopicLayout(t, p + 1, tags)

        for self.rounds in range(1, MAX_ROUNDS + 1):
            cmds: list[Command] = []
            if names is None:
                cmds += [(k.topics, (b"SMEMBERS", k.topics)), (k.groups, (b"SMEMBERS", k.groups))]
            cmds += [(k.topic_meta(t), (b"HGETALL", k.topic_meta(t))) for t in topics]
            cmds += [self._group_command(g) for g in groups]
            for (t, p), gs in parts.items():
                layout = layout_of(t, p)
                read_at[(t, p)] = k.stream(layout, p)
                cmds.append(self._partition_command(layout, p, gs))
            round_ = _Round(self.conn, cmds)
            reply = round_.take
            if names is None:
                topic_names = sorted(text(n) for n in _ok(reply()))
                names = (topic_names, sorted(text(n) for n in _ok(reply())))
            for t in topics:
                raw = _ok(reply())
                metas[t] = meta_from_hash(t, raw) if raw else None
            for g in groups:
                if (r := reply()) is not None:
                    try:
                        descs[g] = parse_describe(r, g)
                    except UnknownGroupError:
                        descs[g] = None
            for tp, gs in parts.items():
                if (r := reply()) is not None:
                    reads[tp] = (gs, _ok(r))
            assert names is not None
            topics = [t for t in names[0] if t not in metas]
            groups = [g for g in names[1] if g not in descs]
            wanted = _wanted(metas, descs)
            parts = {
                tp: gs
                for tp, gs in wanted.items()
                if tp not in reads
                or not set(gs) <= set(reads[tp][0])
                or read_at[tp] != k.stream(layout_of(*tp), tp[1])  # read before its metadata
            }
            if not (topics or groups or parts):
                break
        else:
            raise PartstreamError(
                f"the deployment changed in each of {MAX_ROUNDS} rounds of one scrape; "
                "the next scrape tries again"
            )
        assert names is not None
        self._topics = [t for t in names[0] if metas.get(t) is not None]
        self._groups = [g for g in names[1] if descs.get(g) is not None]
        self._parts = _wanted(metas, descs)
        self._layouts = {t: m.layout for t, m in metas.items() if m is not None}
        return self._result(clock, start, metas, descs, reads)

    def _group_command(self, group: str) -> Command:
        keys = self.conn.keys.group_keys(group)
        return keys[0], (b"FCALL_RO", function_name("scrape"), len(keys), *keys, "group")

    def _partition_command(
        self, layout: TopicLayout, partition: int, groups: Sequence[str]
    ) -> Command:
        k = self.conn.keys
        stream, dlq = k.stream(layout, partition), k.dlq(layout, partition)
        args = [
            "partition",
            self.count_limit,
            RECOUNT_BELOW,
            self.tally.read_from(dlq),
            self.tally.read_limit,
        ]
        return stream, (b"FCALL_RO", function_name("scrape"), 2, stream, dlq, *args, *groups)

    def _result(
        self,
        clock: int,
        start: float,
        metas: dict[str, TopicMeta | None],
        descs: dict[str, GroupDescription | None],
        reads: dict[TopicPartitionKey, tuple[tuple[str, ...], Any]],
    ) -> Scrape:
        k = self.conn.keys
        topics = [m for _, m in sorted(metas.items()) if m is not None]
        states, dead, dlqs = [], [], set()
        for m in topics:
            for p in range(m.partitions):
                _, info, _, _ = _partition_reply(reads[(m.name, p)][1])
                if info is None:
                    states.append(PartitionState(m.name, p, 0, None, None, None))
                else:
                    states.append(
                        PartitionState(m.name, p, info.length, info.first_id, info.last_id,
                                       info.entries_added)
                    )  # fmt: skip
                dlq = k.dlq(m.layout, p)
                dlqs.add(dlq)
                raw = reads[(m.name, p)][1]
                counts = self.tally.update(dlq, raw[4], int(raw[5]))
                dead += [
                    DeadLetterCount(m.name, p, g, r, n) for (g, r), n in sorted(counts.items())
                ]
        self.tally.forget(dlqs)
        groups = []
        for name, d in sorted(descs.items()):
            if d is None:
                continue
            offsets = [
                _offset(d.group, t, p, *reads[(t, p)])
                for t, n in sorted(d.topics.items())
                for p in range(n)
            ]
            members = sum(1 for m in d.members if not m.left)
            groups.append(GroupState(name, d.state, d.epoch, members, tuple(offsets)))
        return Scrape(
            clock,
            time.monotonic() - start,
            tuple(topics),
            tuple(states),
            tuple(groups),
            tuple(dead),
        )


class _Round:
    """One round's replies, taken in the order its commands were sent. A reply saying the
    node lacks the function library loads it there (LibraryMissingError if this user may
    not) and stands as None: the caller sends that command again in the next round."""

    def __init__(self, conn: Connection, cmds: list[Command]) -> None:
        self.conn = conn
        self._pairs = iter(zip(cmds, execute_per_key(conn, cmds, "scraping"), strict=True))
        self._loaded: set[int] = set()

    def take(self) -> Any:
        (key, _), reply = next(self._pairs)
        if not missing_function(reply):
            return reply
        node = node_for_key(self.conn, key)
        if id(node) not in self._loaded:
            self.conn.functions.load(node)
            self._loaded.add(id(node))
        return None


def _ok(reply: Any) -> Any:
    if isinstance(reply, PartstreamError):
        raise reply
    if isinstance(reply, Exception):
        raise translate(reply, "scraping")
    return reply


def _wanted(
    metas: dict[str, TopicMeta | None], descs: dict[str, GroupDescription | None]
) -> dict[TopicPartitionKey, tuple[str, ...]]:
    """Every partition a scrape reads, with the groups to read on it (sorted)."""
    out: dict[TopicPartitionKey, list[str]] = {}
    for m in metas.values():
        if m is not None:
            for p in range(m.partitions):
                out.setdefault((m.name, p), [])
    for name, d in sorted(descs.items()):
        if d is not None:
            for t, n in d.topics.items():
                for p in range(n):
                    out.setdefault((t, p), []).append(name)
    return {tp: tuple(gs) for tp, gs in out.items()}


def _partition_reply(
    raw: Any,
) -> tuple[int, StreamInfo | None, dict[str, Any], list[Any]]:
    """(server ms, stream info, group infos by name, per-group extras) of scrape.lua's reply."""
    clock, info, groups, per = raw[0], raw[1], raw[2], raw[3]
    stream = stream_info_from_reply(info) if info else None
    infos = {g.name: g for g in group_infos_from_reply(groups or [])}
    return time_ms_from_reply(clock), stream, infos, list(per or [])


def _offset(
    group: str, topic: str, partition: int, groups: tuple[str, ...], raw: Any
) -> PartitionOffset:
    now, info, infos, per = _partition_reply(raw)
    pending_raw, head, counted = per[groups.index(group)]
    pending = (
        pending_summary_from_reply(pending_raw) if pending_raw else PendingSummary(0, None, None)
    )
    return offset_of(
        topic,
        partition,
        infos.get(group),
        pending,
        length=info.length if info else 0,
        now_ms=now,
        first_id=info.first_id if info else None,
        head_id=text(head) if head else None,
        counted=(int(counted[0]), bool(int(counted[1]))) if counted else None,
    )


def scrape(
    conn: Connection,
    tally: DeadLetterTally | None = None,
    *,
    count_limit: int = SCRAPE_COUNT_LIMIT,
) -> Scrape:
    """Read the deployment's state once, from scratch (a :class:`Scraper` remembers what it
    saw, so its later scrapes take one round per node). ``tally`` keeps dead-letter counts
    between scrapes (a new one starts from the streams' first entries)."""
    return Scraper(conn, tally, count_limit=count_limit).scrape()
