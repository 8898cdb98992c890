"""Every Redis key partstream uses is named here, and nowhere else.

Names are Redis-Cluster-safe: all keys one command or script touches together share a hash
tag; each partition of a topic has its own tag so partitions spread over cluster nodes; all
keys of one consumer group's coordinator share the group's tag. ``ns`` is the namespace
(default ``ps``), so several deployments or test runs can share one server.

A partition's ``<tag>`` is ``<topic>:<p>:<suffix>``, the suffix (4 characters of
``[0-9a-z]``) chosen when the partition was created so the topic's partitions sit on evenly
spaced cluster slots (:mod:`partitions._base.slots`), and recorded in the topic's metadata
(field ``tags``). A topic created before the suffixes existed has none: its tags stay
``<topic>:<p>``, so its keys never move. Every partition key is built by
:meth:`Keys.partition_key` from the topic's :class:`TopicLayout` (read from its metadata).

====================================  ======  ==============================================
key                                   type    contents / written by
====================================  ======  ==============================================
{ns}:topics                           set     topic names / topic admin
{ns}:t:{<topic>}:meta                 hash    partitions, retention, regions, created_ms,
                                              tags (each partition's tag suffix, see
                                              TopicLayout) / topic admin
{ns}:t:{<tag>}                        stream  the partition's records / producer (append.lua)
{ns}:t:{<tag>}:fence                  hash    group -> "<member_id> <token>" (one space,
                                              token a decimal grant token): who may read
                                              and ack this partition for each group /
                                              the owning consumer (fence.lua claim/release;
                                              read/ack scripts compare the exact string)
{ns}:t:{<tag>}:seq                    hash    producer id -> "seq first_id last_id ms" of
                                              its last appended batch (the idempotence
                                              fallback) / append.lua
{ns}:t:{<tag>}:dlq                    stream  dead letters of this partition: fields dlq.topic,
                                              dlq.partition, dlq.id, dlq.group,
                                              dlq.deliveries, dlq.reason + the original
                                              fields / consumer (consume.lua, atomically
                                              with the XACK)
{ns}:t:{<tag>}:groups                 hash    group -> "<created_ms> <start id>": the group
                                              has touched this partition; a marked group
                                              missing from the stream = state lost /
                                              consume.lua, seek.lua (first touch only).
                                              "<group>:reclaim" -> min idle ms: a "reclaim
                                              stuck entries now" request (':' is never in
                                              a name) / groups.reclaim_now writes it, the
                                              owner's consume.lua read serves and clears it.
                                              "~cut" -> id: safe retention trims below it /
                                              consume.lua (reclaim-time reads), cleared by a
                                              new group or a seek; append.lua reads it
{ns}:t:{<tag>}:applied                hash    "<group> <in topic> <in partition>" -> the
                                              highest input id whose outputs an exactly-once
                                              pipeline applied to this (output) partition,
                                              one field per source / transact.lua "apply"
{ns}:groups                           set     group names / GroupAdmin.create, Member.join
                                              (client side: another slot than the group)
{ns}:g:{<group>}:cfg                  hash    GroupSettings fields (assignor, session and
                                              heartbeat ms, max deliveries, reclaim idle) /
                                              admin.lua, the first member's join
{ns}:g:{<group>}:state                hash    epoch, target_epoch, grant (token counter),
                                              created_ms, topic:<name> -> partitions /
                                              member.lua, admin.lua
{ns}:g:{<group>}:members              hash    member_id -> JSON record (instance, client,
                                              topics, epoch, owned) / member.lua
{ns}:g:{<group>}:hb                   zset    member_id -> last heartbeat, server ms /
                                              member.lua (evicts below now - session)
{ns}:g:{<group>}:target               hash    member_id -> target "topic:p ..." /
                                              admin.lua assign (CAS on the group epoch)
{ns}:g:{<group>}:owners               hash    "topic:p" -> "<member_id> <token> <epoch>",
                                              the current owner and grant / member.lua
{ns}:g:{<group>}:instances            hash    static instance_id -> member_id / member.lua
====================================  ======  ==============================================

A name (topic, group, member, instance id) is 1-100 characters of ``[A-Za-z0-9._-]`` and
starts with a letter or digit, so no ``{``, ``}``, ``*``, ``?``, ``[``, ``:``, whitespace or
control byte ever reaches a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from partitions._base import slots
from partitions._base.errors import ConfigError, InvalidNameError

MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SUFFIX_RE = re.compile(r"[0-9a-z]{1,16}")

DEFAULT_NAMESPACE = "ps"


def validate_name(name: object, kind: str = "name") -> str:
    """Return ``name`` if it is a valid topic/group/member name, else raise InvalidNameError."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidNameError(f"{kind} {name!r} is not valid UTF-8") from None
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidNameError(f"{kind} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{kind} {name[:20]!r}... is longer than {MAX_NAME_LENGTH} chars")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"{kind} {name!r} may only use letters, digits, '.', '_' and '-' "
            "and must start with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """How one topic's partitions are named: each partition's hash-tag suffix, as the
    topic's metadata records them (``TopicMeta.layout``). Immutable; growth makes a new one.

    ``tags[p]`` is partition p's suffix; ``""`` (or no entry: a topic created before
    suffixes, or grown by a client that did not know them) keeps the old tag ``<topic>:<p>``.
    """

    topic: str
    partitions: int
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_name(self.topic, "topic")
        for s in self.tags:
            if s and not _SUFFIX_RE.fullmatch(s):
                raise ConfigError(f"topic {self.topic}: bad partition tag suffix {s!r}")

    @classmethod
    def spread(cls, topic: str, partitions: int) -> TopicLayout:
        """The layout of a new topic: partitions on evenly spaced slots."""
        chosen = slots.spread_slots(topic, partitions)
        return cls(topic, partitions, tuple(_suffix(topic, p, s) for p, s in enumerate(chosen)))

    @classmethod
    def from_field(cls, topic: str, partitions: int, field: str | None) -> TopicLayout:
        """From the metadata's ``tags`` field (comma-separated suffixes; absent = none)."""
        return cls(topic, partitions, tuple(field.split(",")) if field else ())

    @property
    def field(self) -> str:
        """The metadata's ``tags`` field."""
        return ",".join(self.tags)

    @property
    def spread_out(self) -> bool:
        """Some partition has a chosen slot (else every tag is the old ``<topic>:<p>``)."""
        return any(self.tags)

    def tag(self, partition: int) -> str:
        """The hash tag of ``partition``'s keys (no braces)."""
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise ConfigError(f"partition must be an integer, got {partition!r}")
        if not 0 <= partition < self.partitions:
            raise ConfigError(
                f"topic {self.topic} has partitions 0..{self.partitions - 1} (as last read), "
                f"not {partition}"
            )
        suffix = self.tags[partition] if partition < len(self.tags) else ""
        return f"{self.topic}:{partition}:{suffix}" if suffix else f"{self.topic}:{partition}"

    def slot(self, partition: int) -> int:
        """The cluster slot of ``partition``'s keys."""
        return slots.key_slot("{" + self.tag(partition) + "}")

    def grown(self, partitions: int) -> TopicLayout:
        """This layout with partitions added: existing ones keep their tags, new ones get
        slots that keep the spread near even (:func:`partitions._base.slots.grow_slots`)."""
        if partitions == self.partitions:
            return self
        if partitions < self.partitions:
            raise ConfigError(f"topic {self.topic} cannot shrink to {partitions} partitions")
        taken = [self.slot(p) for p in range(self.partitions)]
        new = slots.grow_slots(self.topic, taken, partitions)
        old = (self.tags + ("",) * self.partitions)[: self.partitions]
        added = tuple(_suffix(self.topic, self.partitions + i, s) for i, s in enumerate(new))
        return TopicLayout(self.topic, partitions, old + added)


def _suffix(topic: str, partition: int, slot: int) -> str:
    return slots.tag_suffix(f"{topic}:{partition}:", slot)


class Layouts:
    """The layouts of the topics one client works with, as it last read their metadata:
    shared by its threads (a consumer's and its heartbeat thread), replaced whole."""

    def __init__(self, layouts: Iterable[TopicLayout] = ()) -> None:
        self._by_topic: dict[str, TopicLayout] = {lay.topic: lay for lay in layouts}

    def update(self, layouts: Iterable[TopicLayout]) -> None:
        """Take these (newer) layouts; other topics keep theirs."""
        self._by_topic = {**self._by_topic, **{lay.topic: lay for lay in layouts}}

    def covers(self, topic: str, partition: int) -> bool:
        """Whether ``partition`` of ``topic`` is known (else its metadata must be re-read)."""
        lay = self._by_topic.get(topic)
        return lay is not None and 0 <= partition < lay.partitions

    def of(self, topic: str) -> TopicLayout:
        """``topic``'s layout; ConfigError if its metadata was never read here."""
        try:
            return self._by_topic[topic]
        except KeyError:
            raise ConfigError(f"topic {topic}: its metadata was not read here") from None


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key names for one namespace."""

    ns: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        validate_name(self.ns, "namespace")

    # -- topics ---------------------------------------------------------------------------
    @property
    def topics(self) -> str:
        return f"{self.ns}:topics"

    def topic_meta(self, topic: str) -> str:
        return f"{self.ns}:t:{{{topic}}}:meta"

    def partition_key(self, layout: TopicLayout, partition: int, suffix: str = "") -> str:
        """The one function that names a partition's keys: ``{ns}:t:{<tag>}<suffix>``."""
        return f"{self.ns}:t:{{{layout.tag(partition)}}}{suffix}"

    def stream(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition)

    def fence(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition, ":fence")

    def seq(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition, ":seq")

    def dlq(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition, ":dlq")

    def stream_groups(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition, ":groups")

    def applied(self, layout: TopicLayout, partition: int) -> str:
        return self.partition_key(layout, partition, ":applied")

    def partition_keys(self, layout: TopicLayout, partition: int) -> list[str]:
        """All keys of one partition (they share one slot)."""
        return [
            self.stream(layout, partition),
            self.fence(layout, partition),
            self.seq(layout, partition),
            self.dlq(layout, partition),
            self.stream_groups(layout, partition),
            self.applied(layout, partition),
        ]

    # -- groups ---------------------------------------------------------------------------
    @property
    def groups(self) -> str:
        return f"{self.ns}:groups"

    def _group(self, group: str, suffix: str) -> str:
        return f"{self.ns}:g:{{{group}}}:{suffix}"

    def group_cfg(self, group: str) -> str:
        return self._group(group, "cfg")

    def group_state(self, group: str) -> str:
        return self._group(group, "state")

    def group_members(self, group: str) -> str:
        return self._group(group, "members")

    def group_hb(self, group: str) -> str:
        return self._group(group, "hb")

    def group_target(self, group: str) -> str:
        return self._group(group, "target")

    def group_owners(self, group: str) -> str:
        return self._group(group, "owners")

    def group_instances(self, group: str) -> str:
        return self._group(group, "instances")

    def group_keys(self, group: str) -> list[str]:
        """The coordinator keys of one group, in the order member.lua/admin.lua take them."""
        return [
            self.group_cfg(group),
            self.group_state(group),
            self.group_members(group),
            self.group_hb(group),
            self.group_target(group),
            self.group_owners(group),
            self.group_instances(group),
        ]

    # -- ACL key patterns -----------------------------------------------------------------
    # Globs over the keys above, for ACL rules (partitions._admin.acl). Names never hold glob
    # characters (see validate_name) nor ':', and a stream key is the only partition key
    # ending in "}", so "{topic:*}" matches exactly the partitions of that one topic, with
    # or without a tag suffix: the globs need no metadata.
    @property
    def namespace_glob(self) -> str:
        """Every key of the namespace."""
        return f"{self.ns}:*"

    def _partition_glob(self, topic: str, suffix: str = "") -> str:
        return f"{self.ns}:t:{{{validate_name(topic, 'topic')}:*}}{suffix}"

    def stream_glob(self, topic: str) -> str:
        return self._partition_glob(topic)

    def fence_glob(self, topic: str) -> str:
        return self._partition_glob(topic, ":fence")

    def seq_glob(self, topic: str) -> str:
        return self._partition_glob(topic, ":seq")

    def dlq_glob(self, topic: str) -> str:
        return self._partition_glob(topic, ":dlq")

    def stream_groups_glob(self, topic: str) -> str:
        return self._partition_glob(topic, ":groups")

    def applied_glob(self, topic: str) -> str:
        return self._partition_glob(topic, ":applied")

    def group_glob(self, group: str) -> str:
        """Every coordinator key of one group."""
        return self._group(group, "*")
