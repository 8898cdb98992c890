"""Server replies as typed records: the one module that reads redis-py's raw lists and maps.

redis-py hands back nested lists (RESP2) or maps (RESP3, and some parsed commands) of bytes
and ints. Every other module sees the records built here: records of stream entries, stream
and group summaries (``XINFO``, ``XPENDING``), the consume script's fenced read, ack and retry
answers, the fence holder, the Functions library list, and the coordinator scripts' replies
(member.lua join/heartbeat, admin.lua describe), whose error statuses become the error tree's
types here. :func:`text` is the one decoder of a single reply value.

The parsers are unit-tested against replies recorded from Valkey and Redis 7
(tests/unit/replies/).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from partitions._base.errors import (
    DuplicateInstanceError,
    FencedError,
    MembershipError,
    PartstreamError,
    StateLostError,
    UnknownGroupError,
    UnknownMemberError,
)
from partitions._base.records import (
    HEADER_PREFIX,
    KEY_FIELD,
    VALUE_FIELD,
    Record,
    _display,
    _display_value,
    _Redelivered,
    id_timestamp,
    parse_id,
)
from partitions._base.settings import GroupSettings
from partitions._base.types import (
    Grant,
    GroupDescription,
    GroupState,
    HeartbeatResult,
    MemberDescription,
    PartitionOwner,
    TopicPartition,
)


# -- values ---------------------------------------------------------------------------------
def text(raw: Any) -> str:
    """One reply value as text (bytes are UTF-8; numbers and str as they are)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def string_map(raw: Any) -> dict[str, str]:
    """A flat ``[name, value, ...]`` list (RESP2) or a map (RESP3, HGETALL) as text to text."""
    return {text(k): text(v) for k, v in _items(raw)}


def _items(raw: Any) -> list[tuple[Any, Any]]:
    if isinstance(raw, Mapping):
        return list(raw.items())
    seq = list(raw) if isinstance(raw, list | tuple) else []
    return list(zip(seq[::2], seq[1::2], strict=False))


def _named(raw: Any) -> dict[str, Any]:
    """Like :func:`string_map` but the values stay raw (they may be nested replies)."""
    return {text(k): v for k, v in _items(raw)}


def settings_from_reply(raw: Any) -> GroupSettings:
    """A group's cfg hash (HGETALL, or the flat copy a script returns) as its settings."""
    return GroupSettings.from_fields(string_map(raw))


def time_ms_from_reply(reply: Any) -> int:
    """The server's TIME (raw ``[seconds, microseconds]`` or redis-py's tuple) in ms."""
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def fence_from_reply(raw: Any) -> tuple[str, int] | None:
    """A partition fence's value ``"member token"`` as (member id, token); None if unset."""
    if raw is None:
        return None
    member_id, token = text(raw).split(" ")
    return member_id, int(token)


def library_names(reply: Any) -> list[str]:
    """The library names of a FUNCTION LIST reply (RESP2 flat lists or maps)."""
    return [text(_named(lib).get("library_name", "")) for lib in reply or []]


def info_fields(raw: Any) -> dict[str, str]:
    """A ``name:value`` per line text reply (CLUSTER INFO) as a dict."""
    return dict(line.split(":", 1) for line in text(raw).split() if ":" in line)


# -- stream entries -------------------------------------------------------------------------
def record_from_entry(topic: str, partition: int, entry: Any) -> Record:
    """Build a Record from a raw ``[id, [field, value, ...]]`` entry (any client's)."""
    raw_id, flat = entry[0], entry[1]
    if isinstance(flat, dict):  # redis-py's parsed form: {field: value}
        flat = [x for kv in flat.items() for x in kv]
    flat = flat or []
    key = value = None
    headers: dict[str, bytes] = {}
    for i in range(0, len(flat) - 1, 2):
        name = flat[i]
        if name == KEY_FIELD and key is None:
            key = flat[i + 1]
        elif name == VALUE_FIELD and value is None:
            value = flat[i + 1]
        elif name.startswith(HEADER_PREFIX) and len(name) > 2:
            headers[name[2:].decode("utf-8", "replace")] = flat[i + 1]
    return Record(topic, partition, text(raw_id), key, value, headers, flat)


def records_from_entries(topic: str, partition: int, entries: Iterable[Any]) -> list[Record]:
    """Records of a raw XRANGE / XREADGROUP entry list; entries whose payload was deleted
    (``[id, nil]`` in XCLAIM/XREADGROUP replies) are skipped: see :func:`deleted_ids`."""
    return [record_from_entry(topic, partition, e) for e in entries if e[1] is not None]


def records_from_read(topic: str, partition: int, entries: list[Any]) -> list[Record]:
    """Records of a fenced read's entries; the hot path of consuming.

    The common shape (fields ``key``, ``value`` and nothing else) skips the general parser.
    """
    out: list[Record] = []
    append = out.append
    for e in entries:
        flat = e[1]
        if len(flat) == 4 and flat[0] == KEY_FIELD and flat[2] == VALUE_FIELD:
            append(Record(topic, partition, e[0].decode(), flat[1], flat[3], {}, flat))
        else:
            append(record_from_entry(topic, partition, e))
    return out


def read_reply_items(reply: Any) -> list[tuple[str, list[Any]]]:
    """(stream key, entries) pairs of an XREAD/XREADGROUP reply (a list of pairs in RESP2,
    a map in RESP3 and in some redis-py versions)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    return [(text(k), entries or []) for k, entries in pairs]


def deleted_ids(entries: Iterable[Any]) -> list[str]:
    """IDs of entries whose payload is gone (trimmed/deleted while pending)."""
    return [text(e[0]) for e in entries if e[1] is None]


def entry_ids(entries: Any) -> list[str]:
    """The ids of a raw XRANGE/XREVRANGE reply's entries."""
    return [text(e[0]) for e in entries or []]


# -- dead letters ----------------------------------------------------------------------------
DLQ_PREFIX = b"dlq."
# The metadata consume.lua writes first in every dead letter, in this order.
DLQ_META = ("topic", "partition", "id", "group", "deliveries", "reason")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a partition's dead-letter stream: the original record and why it died.

    ``problems`` lists what could not be read of a malformed dead-letter entry (one written
    by another client or damaged by hand); its other fields are then best effort."""

    dlq_id: str
    topic: str
    partition: int | None  # None if the entry does not say (malformed)
    original_id: str
    group: str
    deliveries: int
    reason: str
    record: Record  # the original entry's fields as they were (none if it was trimmed)
    omitted: int = 0  # original fields left out (another client's entry with thousands)
    problems: tuple[str, ...] = ()
    # Why it failed, as text ("ValueError: ..."), cut to 1 KiB; None when the dead letter
    # carries none (entries written before errors were kept, or a reason-only dead_letter()).
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "dlq_id": self.dlq_id,
            "topic": self.topic,
            "partition": self.partition,
            "id": self.original_id,
            "group": self.group,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "error": self.error,
            "key": _display(self.record.key),
            "value": _display_value(self.record.value),
            "headers": {k: _display(v) for k, v in self.record.headers.items()},
        }
        if self.record.foreign:
            out["fields"] = {_display(k): _display(v) for k, v in self.record.fields.items()}
        if self.omitted:
            out["omitted"] = self.omitted
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def dead_letter_from_entry(entry: Any) -> DeadLetter:
    """Parse one raw dead-letter stream entry ``[id, [field, value, ...]]``.

    The metadata is read by position (the first six pairs, as consume.lua writes them), so an
    original field named ``dlq.*`` is part of the original record, never its metadata. An
    entry that does not have that shape is listed with what could be read."""
    flat = entry[1] or []
    if isinstance(flat, dict):
        flat = [x for kv in flat.items() for x in kv]
    meta: dict[str, str] = {}
    problems: list[str] = []
    i = 0
    for name in DLQ_META:
        if i + 1 < len(flat) and flat[i] == DLQ_PREFIX + name.encode():
            meta[name] = text(flat[i + 1])
            i += 2
        else:
            problems.append(f"no dlq.{name}")
    error = None
    if i + 1 < len(flat) and flat[i] == b"dlq.error":
        error = _display(flat[i + 1])
        i += 2
    omitted = 0
    if i + 1 < len(flat) and flat[i] == b"dlq.omitted":
        omitted = _int(text(flat[i + 1]), "omitted", problems) or 0
        i += 2
    topic = meta.get("topic", "")
    partition = _int(meta["partition"], "partition", problems) if "partition" in meta else None
    original_id = meta.get("id", "")
    if original_id:
        try:
            parse_id(original_id)
        except ValueError:
            problems.append(f"dlq.id {original_id!r} is not a stream id")
    deliveries = _int(meta["deliveries"], "deliveries", problems) if "deliveries" in meta else 0
    record = record_from_entry(topic, partition or 0, [original_id.encode(), flat[i:]])
    return DeadLetter(
        dlq_id=text(entry[0]),
        topic=topic,
        partition=partition,
        original_id=original_id,
        group=meta.get("group", ""),
        deliveries=deliveries or 0,
        reason=meta.get("reason", ""),
        record=record,
        omitted=omitted,
        problems=tuple(problems),
        error=error,
    )


def _int(raw: str, what: str, problems: list[str]) -> int | None:
    try:
        return int(raw)
    except ValueError:
        problems.append(f"dlq.{what} {raw!r} is not an integer")
        return None


# -- stream and group summaries -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Summary of one partition stream (from XINFO STREAM)."""

    length: int
    first_id: str | None
    last_id: str | None
    last_generated_id: str | None
    groups: int
    entries_added: int | None = None  # every entry ever appended (trims do not lower it)

    @property
    def first_timestamp(self) -> int | None:
        return id_timestamp(self.first_id) if self.first_id else None

    @property
    def last_timestamp(self) -> int | None:
        return id_timestamp(self.last_id) if self.last_id else None


def stream_info_from_reply(reply: Any) -> StreamInfo:
    """Parse XINFO STREAM (RESP2 flat list or redis-py dict)."""
    data = _named(reply)
    first, last = data.get("first-entry"), data.get("last-entry")
    generated, added = data.get("last-generated-id"), data.get("entries-added")
    return StreamInfo(
        length=int(data.get("length", 0)),
        first_id=text(first[0]) if first else None,
        last_id=text(last[0]) if last else None,
        last_generated_id=text(generated) if generated else None,
        groups=int(data.get("groups", 0)),
        entries_added=None if added is None else int(added),
    )


@dataclass(frozen=True, slots=True)
class GroupStreamInfo:
    """One consumer group on one partition stream (from XINFO GROUPS)."""

    name: str
    last_delivered_id: str
    pending: int
    entries_read: int | None
    lag: int | None  # None when the server cannot tell (after XGROUP SETID, deletions)


def group_infos_from_reply(reply: Any) -> list[GroupStreamInfo]:
    """Parse XINFO GROUPS (RESP2 flat lists or redis-py dicts)."""
    out = []
    for g in reply:
        d = _named(g)
        entries_read, lag = d.get("entries-read"), d.get("lag")
        out.append(
            GroupStreamInfo(
                name=text(d["name"]),
                last_delivered_id=text(d["last-delivered-id"]),
                pending=int(d.get("pending", 0)),
                entries_read=None if entries_read is None else int(entries_read),
                lag=None if lag is None else int(lag),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """A group's pending entries on one partition (the summary form of XPENDING)."""

    count: int
    min_id: str | None  # the oldest pending entry (None when nothing is pending)
    max_id: str | None


def pending_summary_from_reply(reply: Any) -> PendingSummary:
    """Parse ``XPENDING key group`` (raw ``[count, min, max, consumers]`` or redis-py's dict)."""
    if isinstance(reply, dict):
        d = _named(reply)
        count, low, high = d.get("pending", 0), d.get("min"), d.get("max")
    else:
        count, low, high = reply[0], reply[1], reply[2]
    return PendingSummary(
        int(count or 0), None if low is None else text(low), None if high is None else text(high)
    )


# -- consume.lua ----------------------------------------------------------------------------
class FetchResult:
    """One partition's answer to a fenced read (consume.lua ``read``/``ack``/``retry``).

    ``status`` is 1 (ok), 0 (not owner: ``detail`` is the holder) or -1 (state lost:
    ``detail`` says what vanished: fence, stream or group).
    """

    __slots__ = ("acked", "cursor", "dead", "detail", "reclaimed", "records", "status", "tail")

    def __init__(
        self,
        status: int,
        detail: str = "",
        acked: int = 0,
        records: list[Record] | None = None,
        cursor: str = "",
        tail: str = "",
        dead: int = 0,
        reclaimed: int = 0,
    ) -> None:
        self.status = status
        self.detail = detail
        self.acked = acked
        self.records = records if records is not None else []
        self.cursor = cursor
        self.tail = tail
        self.dead = dead
        self.reclaimed = reclaimed


def fetch_result(topic: str, partition: int, reply: Any) -> FetchResult:
    """Parse consume.lua's ``read`` reply: {1, acked, entries, cursor, tail, dead, reclaimed,
    counts}. The leading ``len(counts)`` entries were recovered from the group's pending
    list: their next hand-out is recorded first (``_claim``), with their deliveries."""
    status = int(reply[0])
    if status != 1:
        return FetchResult(status, text(reply[1]))
    entries = reply[2]
    records = records_from_read(topic, partition, entries) if entries else []
    counts = reply[7]
    for i, recorded in enumerate(counts):
        records[i] = _Redelivered(records[i], int(recorded) + 1)
    return FetchResult(
        1, "", int(reply[1]), records, text(reply[3]), text(reply[4]), int(reply[5]),
        int(reply[6]),
    )  # fmt: skip


def ack_result(reply: Any) -> FetchResult:
    """Parse consume.lua's ``ack`` reply: {1, acked}."""
    status = int(reply[0])
    if status != 1:
        return FetchResult(status, text(reply[1]))
    return FetchResult(1, acked=int(reply[1]))


def seek_result(reply: Any) -> tuple[int, str]:
    """Parse consume.lua's ``seek`` reply: (1, the new last-delivered id), or (status,
    detail) as in :class:`FetchResult`."""
    return int(reply[0]), text(reply[1])


class IdsResult:
    """consume.lua's answer to ``hand``, ``retry`` and ``dead``: status, detail and ids.

    ``ids``: for ``hand`` the ids no longer pending (not to hand out), for ``retry`` the ids
    kept for another hand-out; ``acked`` and ``dead`` count what the call acked and
    dead-lettered."""

    __slots__ = ("acked", "dead", "detail", "ids", "status")

    def __init__(
        self, status: int, detail: str = "", ids: set[str] | None = None, acked: int = 0,
        dead: int = 0,
    ) -> None:  # fmt: skip
        self.status = status
        self.detail = detail
        self.ids = ids if ids is not None else set()
        self.acked = acked
        self.dead = dead


def hand_result(reply: Any) -> IdsResult:
    """Parse consume.lua's ``hand`` reply: {1, acked, gone ids}."""
    status = int(reply[0])
    if status != 1:
        return IdsResult(status, text(reply[1]))
    return IdsResult(1, ids={text(i) for i in reply[2]}, acked=int(reply[1]))


def retry_result(reply: Any) -> IdsResult:
    """Parse consume.lua's ``retry``/``dead`` reply: {1, kept ids, dead}."""
    status = int(reply[0])
    if status != 1:
        return IdsResult(status, text(reply[1]))
    return IdsResult(1, ids={text(i) for i in reply[1]}, dead=int(reply[2]))


# -- member.lua and admin.lua ---------------------------------------------------------------
_ERRORS: dict[str, type[PartstreamError]] = {
    "FENCED": FencedError,
    "UNKNOWN_MEMBER": UnknownMemberError,
    "DUPLICATE_INSTANCE": DuplicateInstanceError,
    "UNKNOWN_GROUP": UnknownGroupError,
    "STATE_LOST": StateLostError,
}


def script_status(reply: list[Any]) -> str:
    """The status word a coordinator script's reply opens with (``OK``, ``DONE``, ``ERR``...)."""
    return text(reply[0]) if reply else ""


def error_code(reply: list[Any]) -> str:
    """The code of an ``{"ERR", code, message}`` reply; "" for any other reply."""
    return text(reply[1]) if script_status(reply) == "ERR" else ""


def raise_for_status(reply: list[Any], group: str) -> None:
    """Raise the typed error an ``{"ERR", code, message}`` reply stands for."""
    if script_status(reply) == "ERR":
        code, message = text(reply[1]), text(reply[2])
        raise _ERRORS.get(code, MembershipError)(f"group {group!r}: {message}")


def parse_member_reply(reply: list[Any], group: str) -> HeartbeatResult:
    """Parse member.lua's join/heartbeat reply."""
    raise_for_status(reply, group)
    _, member_id, member_epoch, group_epoch, target_epoch, cfg, flat, revoke, pending, created = (
        reply[:10]
    )
    age, members = (int(reply[10]), int(reply[11])) if len(reply) >= 12 else (None, 0)
    owned = {
        TopicPartition.parse(flat[i]): Grant(int(flat[i + 1]), int(flat[i + 2]))
        for i in range(0, len(flat), 3)
    }
    return HeartbeatResult(
        member_id=text(member_id),
        member_epoch=int(member_epoch),
        group_epoch=int(group_epoch),
        target_epoch=int(target_epoch),
        settings=settings_from_reply(cfg),
        owned=owned,
        to_revoke=frozenset(TopicPartition.parse(tp) for tp in revoke),
        pending=frozenset(TopicPartition.parse(tp) for tp in pending),
        created_group=bool(int(created)),
        epoch_age_ms=age,
        members=members,
    )


def group_topics(state: Any) -> dict[str, int]:
    """{topic: partitions} of a group's state hash (its ``topic:<name>`` fields)."""
    return {k[6:]: int(v) for k, v in string_map(state).items() if k.startswith("topic:")}


def parse_describe(reply: list[Any], group: str) -> GroupDescription:
    """Parse admin.lua's describe reply into a GroupDescription."""
    raise_for_status(reply, group)
    _, now, cfg, state_flat, members_flat, owners_flat = reply
    now = int(now)
    state = string_map(state_flat)
    owners: list[PartitionOwner] = []
    owners_by_member: dict[str, list[TopicPartition]] = {}
    # Every partition is named twice (its owner, some member's target): parse each name once.
    # A group of 1,000 members over 10,000 partitions is 20,000 names, parsed on every
    # target computation.
    parsed: dict[str, TopicPartition] = {}

    def tp_of(name: str) -> TopicPartition:
        tp = parsed.get(name)
        if tp is None:
            topic, _, part = name.rpartition(":")
            tp = parsed[name] = TopicPartition(topic, int(part))
        return tp

    for tp_raw, value in string_map(owners_flat).items():
        tp = tp_of(tp_raw)
        owner, token, grant_epoch = value.split()
        owners.append(PartitionOwner(tp.topic, tp.partition, owner, int(token), int(grant_epoch)))
        owners_by_member.setdefault(owner, []).append(tp)
    members: list[MemberDescription] = []
    for i in range(0, len(members_flat), 4):
        member_id = text(members_flat[i])
        rec = json.loads(members_flat[i + 1])
        last_hb = float(members_flat[i + 2])
        members.append(
            MemberDescription(
                member_id=member_id,
                instance_id=rec.get("i") or None,
                client=rec.get("c") or "",
                topics=tuple(str(rec.get("t") or "").split()),
                member_epoch=int(rec.get("e", 0)),
                seconds_since_heartbeat=max(0.0, (now - last_hb) / 1000),
                left=rec.get("l") == 1,
                owned=tuple(sorted(owners_by_member.get(member_id, ()))),
                target=tuple(sorted(map(tp_of, text(members_flat[i + 3]).split()))),
            )
        )
    members.sort(key=lambda m: m.member_id)
    epoch, target_epoch = int(state.get("epoch", 0)), int(state.get("target_epoch", 0))
    return GroupDescription(
        group=group,
        state=_group_state(epoch, target_epoch, members),
        epoch=epoch,
        target_epoch=target_epoch,
        settings=settings_from_reply(cfg),
        topics=group_topics(state_flat),
        members=tuple(members),
        partitions=tuple(sorted(owners, key=lambda p: (p.topic, p.partition))),
        server_time_ms=now,
    )


def _group_state(epoch: int, target_epoch: int, members: list[MemberDescription]) -> GroupState:
    if not members:
        return "empty"
    if target_epoch != epoch:
        return "reconciling"
    for m in members:
        if m.member_epoch != target_epoch or set(m.owned) != set(m.target):
            return "reconciling"
    return "stable"
