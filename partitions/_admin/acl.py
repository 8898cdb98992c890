"""Least-privilege ACL users for partstream: the rules of a producer, a consumer, a metrics
exporter (monitor) and an admin.

:func:`acl_rules` returns the arguments of one ``ACL SETUSER`` call (Redis >= 7.0 and Valkey
>= 7.2: it uses key selectors and ``%R~`` read-only key patterns). The rules follow the key
table in :mod:`partitions._base.keys`:

``producer`` (topics T)
    append to T's partition streams (XADD only: the append function, or XADD directly;
    retention rides on XADD's MAXLEN ~ / MINID ~), keep T's idempotence ``:seq`` hashes
    (HGET/HSET/HLEN/HRANDFIELD/HDEL: check, record, forget day-old producers), read the
    safe-retention cut in T's ``:groups`` hashes (HGET/EXISTS, read only) and T's metadata
    (HGETALL). Nothing else: no XRANGE/XREADGROUP/XPENDING/XINFO (it cannot read the topic),
    no XTRIM/DEL (it cannot shorten it), no other topic, no group key, no dead-letter stream.
    So such a producer sends one ``FCALL append`` per batch, not the cheaper MULTI batches
    (native XADDs + ``FCALL commit``, whose commit reads a partition's last entry, trims and
    undoes: MULTI/EXEC/XREVRANGE/XTRIM/XDEL); it finds that out once per node, from a
    transaction that changes nothing (its refusal is in the ACL LOG).
``consumer`` (topics T, groups G)
    read, ack, claim and seek G's positions on T's partitions, write their fences and group
    marks, XADD to their dead-letter streams only, run G's coordinator scripts on
    ``{ns}:g:{G}:*``, register G in ``{ns}:groups``, read T's metadata. It cannot XADD to a
    topic stream, touch another topic, or touch another group's coordinator keys.
``pipeline`` (input topics T, groups G, output topics O)
    what a ``consumer`` of T in G may do, and what an exactly-once pipeline
    (:func:`~partitions.transform`, :class:`~partitions.Pipeline`) writes to O through the
    transact function, in both of its modes: XADD (and TYPE, the function's guard against a
    key of another type) on O's partition streams, the safe-retention cut in O's ``:groups``
    hashes (read only) and the idempotent mode's marks in O's ``:applied`` hashes (HGET,
    HSET), and O's metadata. No reads of O, no trims, no idempotence sequences (a pipeline
    writes no producer batches), no other topic.
``monitor`` (the metrics exporter, ``partstream metrics serve``)
    read-only (``%R~``) on the namespace ``{ns}:*``, with exactly the reads a scrape sends
    (:mod:`partitions._telemetry.scrape`): SMEMBERS of the topics and groups sets, HGETALL of
    topic metadata, and FCALL_RO of the read-only scrape function, whose reads run as this
    user: XINFO STREAM/GROUPS, XPENDING, XLEN, EXISTS on partitions, XRANGE (the first entry a
    group has not read, for lag seconds; the new dead letters, for their reasons), and
    TYPE/HGETALL/HGET/ZSCORE on group keys (describe). No FCALL, so none of the functions
    that write, and no write command at all. XRANGE lets it read entries' payloads (dead
    letters carry their original fields): the exporter needs it for what it reports.
``admin``
    every non-dangerous command on every key of the namespace ``{ns}:*``.

Every role also gets the keyless commands a client needs to connect: PING, INFO (server
version and features), TIME, FCALL / FCALL_RO (partstream's server-side functions, never
SCRIPT or EVAL: no role can load or run code of its own; the monitor gets FCALL_RO only),
CLIENT ID, and the cluster discovery
commands (CLUSTER SLOTS/SHARDS/NODES, COMMAND, ASKING, READONLY). A consumer also gets
MULTI/EXEC/DISCARD/UNWATCH and WATCH on its fences (the fast fetch path) and CLIENT UNBLOCK
(to wake its own blocking read on a rebalance). CONFIG is never granted (``CONFIG GET`` would
reveal ``requirepass``), so a producer or consumer cannot read ``maxmemory-policy``: the
eviction check is skipped for them (one refused CONFIG GET per connect shows in the ACL LOG);
run it with the admin user.

How this holds with functions: the server checks every command a function runs against the
caller's ACL, command and keys together, as if the caller had sent it. FCALL itself needs
read/write access to all the keys it declares, granted in the root selector (with no data
command), while each data command is granted only in a selector naming the keys it may touch.
So a consumer's function can XADD to a dead-letter stream but not to the topic stream.

Limits of Redis ACLs (documented, not fixable by rules): an ACL cannot name a *stream
consumer group* (it is an argument, not a key) nor a hash field, so a consumer of topic T can
read or ack T's partitions under another group's name or overwrite another group's fence
field on T. It still cannot touch another group's coordinator keys or any other topic.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable, Sequence

from partitions._base.errors import ConfigError
from partitions._base.keys import DEFAULT_NAMESPACE, Keys, validate_name

ROLES = ("producer", "consumer", "pipeline", "monitor", "admin")

# What no rule can do, said wherever rules are printed.
ACL_LIMITS = (
    "note: Redis ACLs name keys and commands, not consumer groups or hash fields: a consumer "
    "of a topic can read, ack or move the positions of another group on that topic, and "
    "overwrite its fence field. Isolate tenants by topic or by namespace, not by group."
)

# Keyless commands any partstream client runs (connect, version check, scripts, cluster).
_BASE_COMMANDS = (
    "+ping",
    "+info",
    "+time",
    "+client|id",
    "+fcall",
    "+fcall_ro",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+cluster|info",  # member.lua: who serves the group (a promotion restarts its sessions)
    "+command",
    "+asking",
    "+readonly",
)
# What the append function (and a direct XADD) runs on a partition stream: only XADD, whose
# MAXLEN ~ / MINID ~ options apply retention. A producer can neither read nor trim a topic.
_PRODUCER_STREAM = ("+xadd",)
# The idempotence sequences (append: check, record, forget producers silent for a day).
_PRODUCER_SEQ = ("+hget", "+hset", "+hlen", "+hrandfield", "+hdel")
# Safe retention: append reads the partition's "~cut" (read only; consumers write it).
_PRODUCER_GROUPS = ("+hget", "+exists")
# A consumer on its topic's partition streams, and the code path that sends each command:
_CONSUMER_STREAM = (
    "+xreadgroup",  # the fast fetch path (MULTI/EXEC) and the consume function's read
    "+xread",  # the idle wait for new entries (XREAD BLOCK, on a cluster one XREAD per node)
    "+xack",  # acks riding on the fast path, the consume function's read/ack/hand/dead
    "+xpending",  # consume: takeover recovery, reclaim, retry/dead checks, the retention cut
    "+xclaim",  # consume: recording a recovered record's hand-out, a retry's delivery count
    "+xrange",  # consume: a recovered entry's payload, a dead letter's copy, the cut's page
    "+xrevrange",  # consume: a partition's tail when a read found nothing new
    "+xlen",  # consume: the retention cut (how far past max_length the stream is)
    "+xinfo|groups",  # consume: the cut (every group's position); seek: the group's position
    "+xgroup|create",  # consume: a group's first read of a partition; seek (create=1)
    "+xgroup|setid",  # seek (Consumer.seek, group seek as the owner)
    "+exists",  # consume: stream or group gone (state lost)
)
# The partition's fence and groups hashes: fence claim/release (HGET/HSET/HDEL), the
# consume/seek functions' group marks, reclaim requests and "~cut" (HGET/HSET/HDEL/HEXISTS),
# and the fast path's WATCH of the fences.
_CONSUMER_FENCE = ("+hget", "+hset", "+hdel", "+hexists", "+watch")
# The fast fetch path: WATCH fences, then MULTI / XACK / XREADGROUP / EXEC (UNWATCH when a
# fence moved, DISCARD never sent but part of the same transaction family).
_CONSUMER_TXN = ("+multi", "+exec", "+discard", "+unwatch")
# The member and admin functions on the group's coordinator keys: join checks every key's
# TYPE, assign replaces the target hash (DEL + HSET), the group bootstrap uses HSETNX and
# HINCRBY, describe reads with HGETALL/HVALS, heartbeats and evictions use the hb zset;
# every join/heartbeat reply counts the members (HLEN: the members' debounce of targets).
_CONSUMER_GROUP = (
    "+type",
    "+del",
    "+hget",
    "+hset",
    "+hsetnx",
    "+hdel",
    "+hexists",
    "+hgetall",
    "+hincrby",
    "+hlen",
    "+hvals",
    "+exists",
    "+zadd",
    "+zrangebyscore",
    "+zrem",
    "+zscore",
)
# A pipeline's outputs (transact.lua, "commit" and "apply"): the records' XADDs and the TYPE
# guard on the output streams; "~cut" (HGET/EXISTS) and the TYPE guard on their groups
# hashes, read only; the idempotent mode's per-source marks in the applied hashes.
_PIPELINE_STREAM = ("+xadd", "+type")
_PIPELINE_GROUPS = ("+hget", "+exists", "+type")
_PIPELINE_APPLIED = ("+hget", "+hset")
# The monitor's reads: what _telemetry/scrape.py sends and what scrape.lua runs as the caller.
_MONITOR_COMMANDS = (
    "+smembers",  # the topics and groups sets
    "+hgetall",  # topic metadata; describe: cfg, state, members, owners
    "+hget",  # describe: a member's target
    "+zscore",  # describe: a member's last heartbeat
    "+type",  # describe: the group keys' type guard
    "+exists",  # a partition stream or group that does not exist (yet)
    "+xinfo|stream",  # length, first and last entry, entries added
    "+xinfo|groups",  # each group's position and lag
    "+xpending",  # each group's pending summary
    "+xrange",  # the first entry after a group's position; new dead letters; the NULL-lag count
    "+xlen",  # a dead-letter stream's length
)
# Admin: everything but the dangerous commands (FLUSHALL, KEYS, CONFIG, ACL, DEBUG, ...).
_ADMIN_COMMANDS = ("+@all", "-@dangerous", "+info", "-script|flush", "-function|flush")


def password_hash(password: str) -> str:
    """The ``#<sha256>`` rule for ``password``: sets it without the clear text in the rules."""
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


def _selector(commands: Iterable[str], *patterns: str) -> str:
    return "(" + " ".join([*commands, *patterns]) + ")"


def acl_rules(
    role: str,
    *,
    user: str,
    topics: Sequence[str] = (),
    groups: Sequence[str] = (),
    outputs: Sequence[str] = (),
    namespace: str = DEFAULT_NAMESPACE,
    password: str | None = None,
    client_setinfo: bool = False,
) -> list[str]:
    """The arguments of ``ACL SETUSER`` for a ``role`` user (after the words ACL SETUSER).

    The rules start with ``reset``, so applying them again replaces the user's rights. With no
    ``password`` the user has none and cannot log in until one is set (``>secret`` or
    ``#sha256``); a given password is put in as its SHA-256 (``#...``), never in clear.
    ``client_setinfo`` grants CLIENT SETINFO, which redis-py sends on connect (its refusal is
    harmless but lands in the ACL LOG); only for Redis >= 7.2 and Valkey, since Redis 7.0
    rejects rules naming a command it does not know. ``outputs``: a pipeline's output topics
    (``topics`` are its inputs). Raises ConfigError for an unknown role, a missing topic,
    group or output, or outputs for another role.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    validate_name(user, "ACL user")
    validate_name(namespace, "namespace")
    topics = [validate_name(t, "topic") for t in topics]
    groups = [validate_name(g, "group") for g in groups]
    outputs = [validate_name(o, "output topic") for o in outputs]
    if outputs and role != "pipeline":
        raise ConfigError(f"a {role} user takes no output topic (only a pipeline does)")
    head = [user, "reset", "on"]
    if password is not None:
        if not password:
            raise ConfigError("an ACL password must not be empty")
        head.append(password_hash(password))
    head.append("resetchannels")
    setinfo = ["+client|setinfo"] if client_setinfo else []
    k = Keys(namespace)
    if role == "admin":
        return [*head, f"~{k.namespace_glob}", *_ADMIN_COMMANDS, *setinfo]
    if role == "monitor":
        if topics or groups:
            raise ConfigError("a monitor user takes no topic or group: it reads the namespace")
        # FCALL_RO only: the scrape function is read-only; FCALL would also reach the ones that
        # write (and needs write access to the keys it declares).
        base = [c for c in _BASE_COMMANDS if c != "+fcall"]
        return [*head, "-@all", *base, *setinfo, *_MONITOR_COMMANDS, f"%R~{k.namespace_glob}"]
    if not topics:
        raise ConfigError(f"a {role} user needs at least one topic")
    meta = [f"%R~{k.topic_meta(t)}" for t in topics]
    if role == "producer":
        if groups:
            raise ConfigError("a producer user takes no group")
        streams = [f"~{k.stream_glob(t)}" for t in topics]
        seqs = [f"~{k.seq_glob(t)}" for t in topics]
        marks = [f"~{k.stream_groups_glob(t)}" for t in topics]
        return [
            *head,
            "-@all",
            *_BASE_COMMANDS,
            *setinfo,
            *streams,  # root keys: what FCALL append may declare
            *seqs,
            *marks,
            _selector(_PRODUCER_STREAM, *streams),
            _selector(_PRODUCER_SEQ, *seqs),
            _selector(_PRODUCER_GROUPS, *(f"%R{m}" for m in marks)),
            _selector(["+hgetall"], *meta),
        ]
    if not groups:
        raise ConfigError(f"a {role} user needs at least one group")
    rules = _consumer_rules(head, setinfo, k, topics, groups, meta)
    if role == "consumer":
        return rules
    if not outputs:
        raise ConfigError("a pipeline user needs at least one output topic")
    out_streams = [f"~{k.stream_glob(o)}" for o in outputs]
    out_marks = [f"~{k.stream_groups_glob(o)}" for o in outputs]
    applied = [f"~{k.applied_glob(o)}" for o in outputs]
    return [
        *rules,
        *out_streams,  # root keys: what FCALL transact may declare
        *out_marks,
        *applied,
        _selector(_PIPELINE_STREAM, *out_streams),
        _selector(_PIPELINE_GROUPS, *(f"%R{m}" for m in out_marks)),
        _selector(_PIPELINE_APPLIED, *applied),
        _selector(["+hgetall"], *(f"%R~{k.topic_meta(o)}" for o in outputs)),
    ]


def _consumer_rules(
    head: list[str],
    setinfo: list[str],
    k: Keys,
    topics: Sequence[str],
    groups: Sequence[str],
    meta: list[str],
) -> list[str]:
    streams = [f"~{k.stream_glob(t)}" for t in topics]
    fences = [f"~{glob}" for t in topics for glob in (k.fence_glob(t), k.stream_groups_glob(t))]
    dlqs = [f"~{k.dlq_glob(t)}" for t in topics]
    group_keys = [f"~{k.group_glob(g)}" for g in groups]
    return [
        *head,
        "-@all",
        *_BASE_COMMANDS,
        *setinfo,
        *_CONSUMER_TXN,
        # Wakes the consumer's own blocking XREAD on a rebalance. It could also unblock other
        # clients' blocking reads (they return early, nothing is lost); without it a
        # rebalance is noticed only after block_ms and every wake-up lands in the ACL LOG.
        "+client|unblock",
        *streams,  # root keys: what the consumer's scripts may declare
        *fences,
        *dlqs,
        *group_keys,
        _selector(_CONSUMER_STREAM, *streams),
        _selector(_CONSUMER_FENCE, *fences),
        _selector(["+xadd", "+exists"], *dlqs),
        _selector(_CONSUMER_GROUP, *group_keys),
        _selector(["+sadd"], f"~{k.groups}"),
        _selector(["+hgetall"], *meta),
    ]


def setuser_command(rules: Sequence[str]) -> str:
    """One ``ACL SETUSER ...`` line, quoted for a shell (``redis-cli ACL SETUSER ...``)."""
    return "ACL SETUSER " + shlex.join(rules)


__all__ = ["ACL_LIMITS", "ROLES", "acl_rules", "password_hash", "setuser_command"]
