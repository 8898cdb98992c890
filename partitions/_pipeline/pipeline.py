"""Exactly-once consume -> transform -> produce: outputs and the input's ack commit together.

:class:`Pipeline` (and :class:`AsyncPipeline`) wraps a consumer: for each input record the
application computes its outputs and calls ``send_and_commit(record, outputs)``.

What holds where:

* **Single node, or a Sentinel-managed primary -- atomic.** One server call checks the input
  partition's fence (this member's grant) and that the input is still pending, appends every
  output and acks the input, or does nothing. A crash (kill -9 at any instant) leaves either
  all of it or none of it; a fenced-off member gets NotOwnerError and writes nothing.
* **Cluster -- idempotent.** The input and output partitions live in different slots, so no
  single call can write them all. Each output partition keeps, per source (group, input
  topic, input partition), the highest input id it applied; the outputs are appended first,
  one call per output partition, and one at or below the mark is dropped as a duplicate;
  then the consumer acks the input, fenced. A crash between the two replays the input on the
  next owner, whose writes are dropped: every output is in its partition exactly once, and
  a fenced-off member's ack is refused (NotOwnerError) after its outputs were written, which
  the next owner's replay then drops.

The idempotent mode needs what the mark assumes, so the pipeline requires it: the records of
one input partition are handled one at a time, in partition order (no key concurrency within
a partition), every output of a record before the next record. The transform must be a
function of the input record (a replay must produce the same outputs to the same
partitions). A seek backwards of the input replays records whose outputs the marks then drop.

In both modes ``send_and_commit`` is safe to call again with the same record after any error
(it never writes twice); a caller must do that, or stop, before handling a later record of
that partition (:func:`transform` does). The consumer needs ``auto_commit=False``: the
pipeline acks. Records of a partition that raised NotOwnerError are the new owner's now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from partitions._admin.topics import TopicMeta, existing_meta
from partitions._base.durability import Durability
from partitions._base.errors import ConfigError, ConnectionFailedError, NotOwnerError, translate
from partitions._base.functions import FCall, Send, call_steps, is_cluster_client
from partitions._base.keys import Keys
from partitions._base.records import Record
from partitions._base.steps import Steps, adrive, drive
from partitions._client.aio import AsyncConnection
from partitions._client.connection import Connection, connect
from partitions._consumer.aio import AsyncConsumer
from partitions._consumer.consumer import Consumer
from partitions._pipeline import plan
from partitions._pipeline.plan import Committed, Mode, Output

# Topic metadata is trusted this long: a topic that grows or changes retention is picked up.
METADATA_MAX_AGE_S = 30.0
DEFAULT_MAX_RECORD_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class Commit:
    """Ack ``record`` through the consumer (fenced): the idempotent mode's last step. The
    answer is the consumer's grant of the record's partition after it (None: revoked)."""

    record: Record


class PipelineCore:
    """What both shells share: the mode, the output topics' metadata, and the steps of one
    commit (:meth:`steps`), written once."""

    def __init__(
        self,
        keys: Keys,
        group: str,
        *,
        cluster: bool,
        mode: Mode,
        retry_for: float,
        durability: Durability | None,
        max_record_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys, self.group = keys, group
        self.mode = plan.choose_mode(mode, cluster)
        self.cluster, self.retry_for = cluster, retry_for
        self.durability = durability
        if not 1 <= max_record_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_record_bytes must be between 1 byte and 64 MiB")
        self.max_record_bytes = max_record_bytes
        self._clock = clock
        self._metas: dict[str, tuple[TopicMeta, float]] = {}

    def stale(self, topics: Iterable[str]) -> list[str]:
        """The topics (outputs, and the input's in atomic mode) whose metadata must be
        (re-)read first."""
        now = self._clock()
        fresh = {t for t, (_, at) in self._metas.items() if now - at <= METADATA_MAX_AGE_S}
        return sorted(set(topics) - fresh)

    def _read_meta(self, topic: str) -> Steps[None]:
        try:
            raw = yield Send(("HGETALL", self.keys.topic_meta(topic)))
        except rex.RedisError as err:
            raise translate(err, f"reading topic {topic}") from err
        except rex.RedisClusterException as err:
            raise ConnectionFailedError(f"reading topic {topic}: {err}") from err
        self._metas[topic] = (existing_meta(topic, raw), self._clock())

    def steps(
        self, record: Record, outputs: Iterable[Output], fence: str | None
    ) -> Steps[Committed]:
        """One commit: read what metadata is stale, plan (all checks first), then either the
        atomic call, or the idempotent calls and the consumer's fenced ack."""
        outs = list(outputs)
        if fence is None:
            raise NotOwnerError(
                f"this consumer does not own {record.topic}/{record.partition} (any more): "
                "nothing was written"
            )
        wanted = [o.topic for o in outs if isinstance(o, Output)]
        if self.mode == "atomic":
            wanted.append(record.topic)  # its keys are in the call
        for topic in self.stale(wanted):
            yield from self._read_meta(topic)
        known = self._metas.get(record.topic)
        if self.mode == "atomic" and known and record.partition >= known[0].partitions:
            yield from self._read_meta(record.topic)  # grown since it was read
        metas = {t: m for t, (m, _) in self._metas.items()}
        blocks, n = plan.blocks_for(outs, metas, record.partition, self.max_record_bytes)
        if self.mode == "atomic":
            source = metas[record.topic].layout
            call = plan.commit_call(self.keys, record, source, self.group, fence, blocks)
            reply = yield from self._call(call)
            return plan.settle_commit(record, blocks, n, reply)
        replies = []
        for block in blocks:
            call = plan.apply_call(self.keys, record, self.group, block)
            replies.append((yield from self._call(call)))
        still = yield Commit(record)
        if still is None:
            # Revoked while the ack was being sent (the consumer then drops it unsent): the
            # next owner replays the record, and the marks drop its outputs there.
            raise NotOwnerError(
                f"{record.topic}/{record.partition} was revoked before its ack: its outputs "
                "are written once; the next owner's replay of it writes nothing"
            )
        return plan.settle_apply(record, blocks, n, replies)

    def _call(self, call: FCall) -> Steps[Any]:
        return call_steps(
            call, retry_for=self.retry_for, cluster=self.cluster, durability=self.durability
        )


def _check_consumer(config: Any) -> None:
    if config.auto_commit:
        raise ConfigError(
            "an exactly-once pipeline acks its inputs itself: give its consumer "
            "ConsumerConfig(auto_commit=False)"
        )


class Pipeline:
    """Exactly-once consume -> transform -> produce over a :class:`Consumer` (see the
    module docstring for what holds on a single node, behind Sentinel and on a Cluster).

    ``conn``: the server of the output topics, the consumer's (default: :func:`connect`'s
    default server). ``mode``: ``"auto"`` (atomic unless on a Cluster), ``"atomic"`` or
    ``"idempotent"``. ``durability``: wait for replicas after the output writes (as the
    producer's ``acks="all"``). Use from the consumer's thread.
    """

    def __init__(
        self,
        consumer: Consumer,
        conn: Connection | None = None,
        *,
        mode: Mode = "auto",
        durability: Durability | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        _check_consumer(consumer.config)
        self._owns_conn = conn is None
        self.conn = conn or connect()
        self.consumer = consumer
        functions = self.conn.functions
        self.core = PipelineCore(
            self.conn.keys,
            consumer.group,
            cluster=is_cluster_client(self.conn.client),
            mode=mode,
            retry_for=functions.retry_for,
            durability=durability,
            max_record_bytes=max_record_bytes,
        )
        self._functions = functions.perform

    @property
    def mode(self) -> str:
        """``"atomic"`` or ``"idempotent"``: the guarantee this pipeline gives (module doc)."""
        return self.core.mode

    def send_and_commit(self, record: Record, outputs: Iterable[Output]) -> Committed:
        """Write ``outputs`` for ``record`` and ack ``record``, exactly once.

        Raises NotOwnerError if this consumer's grant of the record's partition moved on
        (atomic: nothing was written; idempotent: what was written is dropped from the new
        owner's replay); any other error may be retried with the same record."""
        fence = self.consumer.fence(record.topic, record.partition)
        return drive(self.core.steps(record, outputs, fence), self._answer)

    def _answer(self, action: Any) -> Any:
        if isinstance(action, Commit):
            rec = action.record
            self.consumer.commit([rec])
            return self.consumer.fence(rec.topic, rec.partition)
        return self._functions(action)

    def close(self) -> None:
        """Close the connection if the pipeline opened it (the consumer is the caller's)."""
        if self._owns_conn:
            self.conn.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPipeline:
    """:class:`Pipeline` for an :class:`AsyncConsumer` (a single node: atomic by default),
    the same steps awaited on an :class:`AsyncConnection` to the same server."""

    def __init__(
        self,
        consumer: AsyncConsumer,
        conn: AsyncConnection,
        *,
        mode: Mode = "auto",
        durability: Durability | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        _check_consumer(consumer.config)
        self.conn, self.consumer = conn, consumer
        self.core = PipelineCore(
            conn.keys,
            consumer.group,
            cluster=is_cluster_client(conn.client),
            mode=mode,
            retry_for=conn.functions.retry_for,
            durability=durability,
            max_record_bytes=max_record_bytes,
        )

    @property
    def mode(self) -> str:
        return self.core.mode

    async def send_and_commit(self, record: Record, outputs: Iterable[Output]) -> Committed:
        """See :meth:`Pipeline.send_and_commit`."""
        fence = self.consumer.fence(record.topic, record.partition)
        perform = self.conn.functions.perform

        async def ack(rec: Record) -> str | None:
            await self.consumer.commit([rec])
            return self.consumer.fence(rec.topic, rec.partition)

        def answer(action: Any) -> Any:
            return ack(action.record) if isinstance(action, Commit) else perform(action)

        return await adrive(self.core.steps(record, outputs, fence), answer)
