"""Every Redis key partstream uses is named here, and nowhere else.

Names are Redis-Cluster-safe: all keys one command or script touches together share a hash
tag; each partition of a topic has its own tag so partitions spread over cluster nodes; all
keys of one consumer group's coordinator share the group's tag. ``ns`` is the namespace
(default ``ps``), so several deployments or test runs can share one server.

====================================  ======  ==============================================
key                                   type    contents / written by
====================================  ======  ==============================================
{ns}:topics                           set     topic names / topic admin
{ns}:t:{<topic>}:meta                 hash    partitions, retention, regions, created_ms /
                                              topic admin
{ns}:t:{<topic>:<p>}                  stream  the partition's records / producer (append.lua)
{ns}:t:{<topic>:<p>}:fence            hash    group -> "<member_id> <token>" (one space,
                                              token a decimal grant token): who may read
                                              and ack this partition for each group /
                                              the owning consumer (fence.lua claim/release;
                                              read/ack scripts compare the exact string)
{ns}:t:{<topic>:<p>}:seq              hash    producer id -> "seq first_id last_id ms" of
                                              its last appended batch (the idempotence
                                              fallback) / append.lua
{ns}:t:{<topic>:<p>}:dlq              stream  dead letters of this partition: fields dlq.topic,
                                              dlq.partition, dlq.id, dlq.group,
                                              dlq.deliveries, dlq.reason + the original
                                              fields / consumer (consume.lua, atomically
                                              with the XACK)
{ns}:t:{<topic>:<p>}:groups           hash    group -> "<created_ms> <start id>": the group
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
{ns}:t:{<topic>:<p>}:applied          hash    "<group> <in topic> <in partition>" -> the
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
from dataclasses import dataclass

from partitions._base.errors import InvalidNameError

MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

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

    def _partition(self, topic: str, partition: int | str, suffix: str = "") -> str:
        return f"{self.ns}:t:{{{topic}:{partition}}}{suffix}"

    def stream(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition)

    def fence(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition, ":fence")

    def seq(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition, ":seq")

    def dlq(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition, ":dlq")

    def stream_groups(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition, ":groups")

    def applied(self, topic: str, partition: int) -> str:
        return self._partition(topic, partition, ":applied")

    def partition_keys(self, topic: str, partition: int) -> list[str]:
        """All keys of one partition (they share one slot)."""
        return [
            self.stream(topic, partition),
            self.fence(topic, partition),
            self.seq(topic, partition),
            self.dlq(topic, partition),
            self.stream_groups(topic, partition),
            self.applied(topic, partition),
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
    # characters (see validate_name), and a stream key is the only partition key ending in
    # "}", so "{topic:*}" matches exactly the partitions of that one topic.
    @property
    def namespace_glob(self) -> str:
        """Every key of the namespace."""
        return f"{self.ns}:*"

    def stream_glob(self, topic: str) -> str:
        return self._partition(topic, "*")

    def fence_glob(self, topic: str) -> str:
        return self._partition(topic, "*", ":fence")

    def seq_glob(self, topic: str) -> str:
        return self._partition(topic, "*", ":seq")

    def dlq_glob(self, topic: str) -> str:
        return self._partition(topic, "*", ":dlq")

    def stream_groups_glob(self, topic: str) -> str:
        return self._partition(topic, "*", ":groups")

    def applied_glob(self, topic: str) -> str:
        return self._partition(topic, "*", ":applied")

    def group_glob(self, group: str) -> str:
        """Every coordinator key of one group."""
        return self._group(group, "*")
