"""The consumer's script calls, built by name: one builder per op of ``consume.lua``.

Each builder mirrors the script's header (KEYS 1 stream, 2 fence, 3 groups, 4 dlq; ARGV 1 op,
2 group, 3 fence value, 4 topic, 5 partition, 6 consumer name, then the op's own arguments),
so nobody else indexes the argument list: what a call carries back to its caller (the acks
it sends, how many) is a named field of :class:`ScriptCall`. ``seek.lua`` (KEYS stream,
fence, groups; ARGV group, fence value, new id, create) and ``fence.lua``'s release (KEYS
fence; ARGV 'release', group, member id, token) get theirs too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from partitions._base.errors import ConfigError
from partitions._base.functions import function_name
from partitions._base.records import Record
from partitions._consumer.assignment import STREAM_CONSUMER, PartitionState

CONSUME = function_name("consume")
SEEK = function_name("seek")
FENCE = function_name("fence")

# A dead letter's error text is a field of its entry, bounded so that a huge exception
# message (a whole payload quoted back) cannot bloat the dead-letter stream.
MAX_ERROR_BYTES = 1024
TRUNCATED = b" ...[truncated]"
# The reason is a label (the exporter counts dead letters by it): a short word, never text.
_REASON = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(slots=True)
class ScriptCall:
    """One FCALL of one partition: the function, its KEYS and ARGV, and the ids it acks."""

    st: PartitionState
    function: str
    keys: list[str]
    args: list[Any]
    acks: list[str] = field(default_factory=list)  # ids this call acks (read, hand, ack)
    # (id, deliveries) pairs: the hand-outs a 'hand' call records, or a 'read' takes back
    # (those of a lost 'hand' call).
    handed: list[tuple[str, int]] = field(default_factory=list)

    def command(self) -> tuple[Any, ...]:
        return ("FCALL", self.function, len(self.keys), *self.keys, *self.args)


def _consume(
    st: PartitionState, op: str, *rest: Any, acks: list[str] | None = None,
    handed: list[tuple[str, int]] | None = None,
) -> ScriptCall:  # fmt: skip
    keys = [st.stream, st.fence_key, st.groups_key, st.dlq_key]
    args = [op, st.group, st.fence, st.topic, str(st.partition), STREAM_CONSUMER, *rest]
    return ScriptCall(st, CONSUME, keys, args, acks or [], handed or [])


def _pairs(records: list[Record], less: int = 0) -> list[Any]:
    return [x for r in records for x in (r.id, r.deliveries - less)]


def read_call(
    st: PartitionState,
    *,
    count: int,
    max_deliveries: int,
    reclaim_ms: int,
    start: str,
    acks: list[str],
    unhand: list[tuple[str, int]] | None = None,
) -> ScriptCall:
    """``read``: 7 count, 8 cursor, 9 max_deliveries, 10 reclaim idle ms (0: none), 11 start
    id if the group is created here, 12 safe retention, 13 n acks, 14.. ids to ack first,
    then n and the pairs id, deliveries of ``unhand``: hand-outs a lost ``hand`` call
    recorded, taken back first (the consumer never made them)."""
    undo = unhand or []
    return _consume(
        st, "read", count, st.cursor, max_deliveries, reclaim_ms, start, st.retention,
        len(acks), *acks, len(undo), *[x for pair in undo for x in pair], acks=acks,
        handed=undo,
    )  # fmt: skip


def reclaim_call(
    st: PartitionState, *, count: int, max_deliveries: int, reclaim_ms: int
) -> ScriptCall:
    """``reclaim``: 7 count, 8 max_deliveries, 9 reclaim idle ms, 10 safe retention."""
    return _consume(st, "reclaim", count, max_deliveries, reclaim_ms, st.retention)


def hand_call(st: PartitionState, acks: list[str], claims: list[Record]) -> ScriptCall:
    """``hand``: 7 n acks, 8.. ids to ack, then pairs id, deliveries (recorded hand-outs)."""
    handed = [(r.id, r.deliveries) for r in claims]
    return _consume(st, "hand", len(acks), *acks, *_pairs(claims), acks=acks, handed=handed)


def ack_call(st: PartitionState, ids: list[str]) -> ScriptCall:
    """``ack``: 7.. ids to ack."""
    return _consume(st, "ack", *ids, acks=ids)


def retry_call(st: PartitionState, records: list[Record], max_deliveries: int) -> ScriptCall:
    """``retry``: 7 max_deliveries, 8.. pairs id, deliveries."""
    return _consume(st, "retry", max_deliveries, *_pairs(records))


def dead_call(
    st: PartitionState,
    records: list[Record],
    reason: str,
    *,
    handed: bool,
    errors: Sequence[str | None] | None = None,
) -> ScriptCall:
    """``dead``: 7 reason, 8.. triples id, deliveries, error ('' = none). ``handed=False``:
    never handed out, so the fetch into the buffer is not counted as a delivery; ``errors``:
    one error text per record (None: none), cut to :data:`MAX_ERROR_BYTES`."""
    check_reason(reason)
    texts = errors if errors is not None else [None] * len(records)
    less = 0 if handed else 1
    args: list[Any] = [reason]
    for r, text in zip(records, texts, strict=True):
        args += (r.id, r.deliveries - less, b"" if text is None else bounded_error(text))
    return _consume(st, "dead", *args)


def check_reason(reason: str) -> None:
    """A dead-letter reason is a short label (ConfigError otherwise): the error text goes
    beside it."""
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise ConfigError(
            f"a dead-letter reason is a short label of letters, digits and _.:- (at most 64), "
            f"not {reason!r}: pass free text as error="
        )


def bounded_error(text: str) -> bytes:
    """``text`` as UTF-8, cut to :data:`MAX_ERROR_BYTES` (whole characters) with a marker."""
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= MAX_ERROR_BYTES:
        return raw
    head = raw[: MAX_ERROR_BYTES - len(TRUNCATED)].decode("utf-8", "ignore").encode()
    return head + TRUNCATED


def seek_call(st: PartitionState, new_id: str) -> ScriptCall:
    """``seek.lua`` for the owner: group, fence value, new id, '0' (never create)."""
    keys = [st.stream, st.fence_key, st.groups_key]
    return ScriptCall(st, SEEK, keys, [st.group, st.fence, new_id, "0"])


def release_call(st: PartitionState) -> ScriptCall:
    """``fence.lua`` release: clear the fence only if it still holds this grant (1, else 0)."""
    args = ["release", st.group, st.member_id, str(st.token)]
    return ScriptCall(st, FENCE, [st.fence_key], args)
