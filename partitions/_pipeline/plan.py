"""What one exactly-once commit sends and what its replies mean: pure, no I/O.

An input record's outputs are checked and encoded first (bad input raises before anything is
written), grouped by output partition, then planned as ``transact.lua`` calls:

* ``atomic`` (a single node, or a Sentinel-managed primary): one ``commit`` call touching the
  input partition and every output partition;
* ``idempotent`` (a Cluster, where those keys live in different slots): one ``apply`` call
  per output partition, each dropping what it applied before for this source, then the input
  is acked by the consumer (fenced) -- see :mod:`partitions._pipeline.pipeline`.

tests/unit/test_pipeline_plan.py runs these functions on recorded replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from partitions._admin.topics import TopicMeta
from partitions._base.errors import (
    ConfigError,
    InvalidRecordError,
    NotOwnerError,
    StateLostError,
)
from partitions._base.functions import FCall
from partitions._base.keys import Keys, TopicLayout
from partitions._base.records import (
    Key,
    Record,
    Value,
    check_size,
    encode_headers,
    encode_key,
    encode_value,
    entry_fields,
)
from partitions._base.replies import text
from partitions._producer.batch import RecordMetadata

Mode = Literal["auto", "atomic", "idempotent"]
MODES = ("auto", "atomic", "idempotent")
# Outputs of one input record, and their encoded bytes: one script call carries them all, so
# both are bounded far below the server's argument and Lua stack limits.
MAX_OUTPUTS = 1000
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Output:
    """One record a pipeline writes for an input record (a Kafka ``ProducerRecord``).

    Routed like :meth:`Producer.send`: ``partition`` if given, else by ``key`` (within
    ``region``'s range). A keyless output goes to the input's partition number modulo the
    range's width (not the producer's sticky rule): a replay must route it the same way.
    """

    topic: str
    value: Value
    key: Key = None
    headers: Mapping[str, str | bytes] | None = None
    partition: int | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """What :meth:`Pipeline.send_and_commit` did for one input record.

    ``written``: per output, in the order given, where it was appended, or None where it was
    dropped as a duplicate (a replay: it had been written before). ``duplicate``: the input
    had been committed before, so this call wrote nothing (atomic mode: the input was no
    longer pending; idempotent mode: every output partition had it).
    """

    record: Record
    written: tuple[RecordMetadata | None, ...]
    duplicate: bool


@dataclass(slots=True)
class Block:
    """The outputs bound for one output partition, as ``transact.lua`` arguments."""

    topic: str
    partition: int
    meta: TopicMeta
    indexes: list[int] = field(default_factory=list)  # positions in the caller's outputs
    args: list[bytes] = field(default_factory=list)  # records, in append.lua's shapes

    def retention(self) -> list[Any]:
        spec = self.meta.spec
        return [spec.max_length or 0, spec.retention_ms or 0, 1 if spec.safe_retention else 0]


def choose_mode(mode: str, cluster: bool) -> Literal["atomic", "idempotent"]:
    """``auto``: atomic where one call may touch every key (not a Cluster), else idempotent."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "idempotent" if cluster else "atomic"
    if mode == "atomic" and cluster:
        raise ConfigError(
            "mode='atomic' needs one call to touch the input and the output partitions: a "
            "single node or a Sentinel-managed primary, not a Cluster (use 'idempotent')"
        )
    return "atomic" if mode == "atomic" else "idempotent"


def _record_args(out: Output, max_bytes: int) -> list[bytes]:
    kb, vb = encode_key(out.key), encode_value(out.value)
    if out.headers is None and kb is not None and vb is not None:
        check_size(len(kb) + len(vb), max_bytes)
        return [b"0", kb, vb]
    fields = entry_fields(kb, vb, encode_headers(out.headers))
    check_size(sum(len(f) for f in fields), max_bytes)
    return [b"%d" % len(fields), *fields]


def _partition(out: Output, meta: TopicMeta, kb: bytes | None, input_partition: int) -> int:
    router = meta.spec.router()
    if out.partition is not None:
        p = out.partition
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < meta.partitions:
            raise ConfigError(
                f"topic {meta.name} has partitions 0..{meta.partitions - 1}, not {p!r}"
            )
        return p
    routed = router.route(kb, out.region)
    if routed is not None:
        return routed
    first, last = router.range_for(out.region)
    return first + input_partition % (last - first + 1)


def blocks_for(
    outputs: Iterable[Output],
    metas: Mapping[str, TopicMeta],
    input_partition: int,
    max_record_bytes: int,
) -> tuple[list[Block], int]:
    """Check, encode and route ``outputs`` into one block per output partition (in order of
    first use); returns the blocks and the number of outputs. Raises before any write."""
    blocks: dict[tuple[str, int], Block] = {}
    total = n = 0
    for n, out in enumerate(outputs, 1):
        if not isinstance(out, Output):
            raise ConfigError(f"outputs must be partitions.Output, not {type(out).__name__}")
        if n > MAX_OUTPUTS:
            raise InvalidRecordError(f"an input record has more than {MAX_OUTPUTS} outputs")
        meta = metas[out.topic]
        args = _record_args(out, max_record_bytes)
        total += sum(len(a) for a in args)
        if total > MAX_OUTPUT_BYTES:
            raise InvalidRecordError(
                f"the outputs of one input record are over {MAX_OUTPUT_BYTES} bytes"
            )
        p = _partition(out, meta, encode_key(out.key), input_partition)
        block = blocks.get((out.topic, p))
        if block is None:
            block = blocks[(out.topic, p)] = Block(out.topic, p, meta)
        block.indexes.append(n - 1)
        block.args += args
    return list(blocks.values()), n


def commit_call(
    keys: Keys, record: Record, source: TopicLayout, group: str, fence: str, blocks: list[Block]
) -> FCall:
    """``transact.lua commit``: the input's fence, pending check and ack with every block;
    ``source`` is the input topic's layout."""
    t, p = record.topic, record.partition
    call_keys = [keys.stream(source, p), keys.fence(source, p), keys.stream_groups(source, p)]
    args: list[Any] = ["commit", group, fence, record.id, len(blocks)]
    for b in blocks:
        out = b.meta.layout
        call_keys += [keys.stream(out, b.partition), keys.stream_groups(out, b.partition)]
        args += [*b.retention(), len(b.indexes), *b.args]
    return FCall("transact", call_keys, args, f"committing {t}/{p}@{record.id} for {group}")


def source(group: str, record: Record) -> str:
    """The field an output partition's applied hash keeps this input partition's mark in."""
    return f"{group} {record.topic} {record.partition}"


def apply_call(keys: Keys, record: Record, group: str, block: Block) -> FCall:
    """``transact.lua apply``: one block, dropped if this source's mark is at or past it."""
    t, p, out = block.topic, block.partition, block.meta.layout
    call_keys = [keys.stream(out, p), keys.stream_groups(out, p), keys.applied(out, p)]
    args: list[Any] = ["apply", source(group, record), record.id, *block.retention()]
    args += [len(block.indexes), *block.args]
    where = f"applying {record.topic}/{record.partition}@{record.id} to {t}/{p}"
    return FCall("transact", call_keys, args, where)


def _metadata(block: Block, ids: list[Any], written: list[RecordMetadata | None]) -> None:
    for i, rid in zip(block.indexes, ids, strict=True):
        written[i] = RecordMetadata(block.topic, block.partition, text(rid))


def settle_commit(record: Record, blocks: list[Block], n: int, reply: Any) -> Committed:
    """The ``commit`` reply as a :class:`Committed`; NotOwnerError / StateLostError when the
    call was refused (nothing was written)."""
    status = int(reply[0])
    where = f"{record.topic}/{record.partition}"
    if status == 0:
        raise NotOwnerError(
            f"{where} is held by another grant ({text(reply[1])}): nothing was written; the "
            "new owner processes the record"
        )
    if status == -1:
        raise StateLostError(f"{where}: the {text(reply[1])} vanished under a live owner")
    written: list[RecordMetadata | None] = [None] * n
    if status == 2:
        return Committed(record, tuple(written), True)
    for block, ids in zip(blocks, reply[1:], strict=True):
        _metadata(block, ids, written)
    return Committed(record, tuple(written), False)


def settle_apply(record: Record, blocks: list[Block], n: int, replies: list[Any]) -> Committed:
    """The ``apply`` replies (one per block) as a :class:`Committed` (the input is acked)."""
    written: list[RecordMetadata | None] = [None] * n
    fresh = False
    for block, reply in zip(blocks, replies, strict=True):
        if int(reply[0]) == 1:
            fresh = True
            _metadata(block, reply[1:], written)
    return Committed(record, tuple(written), bool(blocks) and not fresh)
