"""``partitions.transform``: a consume -> transform -> produce process, exactly once.

A loop around a :class:`~partitions.Consumer` and a :class:`~partitions.Pipeline`: each
record's outputs are ``fn(record)`` (an iterable of :class:`~partitions.Output`), committed
with the record by :meth:`Pipeline.send_and_commit`. Records of one partition are handled one
at a time, in order (what the idempotent mode requires, see the pipeline's docstring); a
commit that failed with its outcome unknown is tried again with the same record before any
later record of its partition. SIGTERM/SIGINT (or ``stop``) end the loop after the record in
hand; the consumer then closes (releases its partitions, leaves the group).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from partitions._base.errors import ConfigError, ConnectionFailedError, NotOwnerError
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._pipeline.pipeline import Pipeline
from partitions._pipeline.plan import Mode, Output

log = logging.getLogger("partstream.pipeline")

Transform = Callable[[Record], Iterable[Output]]
# Pauses while a commit's server is unreachable: it is retried with the same record.
_RETRY_PAUSE_S = 0.1
_MAX_RETRY_PAUSE_S = 2.0


@dataclass(slots=True)
class TransformStats:
    """What one :func:`transform` run did."""

    committed: int = 0  # input records whose outputs and ack committed in this run
    duplicates: int = 0  # inputs found committed before (a replay): nothing written again
    outputs: int = 0  # output records written
    refused: int = 0  # commits refused: the partition had moved on (its new owner redoes it)
    dead_lettered: int = 0  # inputs whose transform raised (on_error="dead_letter")
    retried: int = 0  # commits tried again after an unknown outcome


def transform(
    fn: Transform,
    topics: str | Iterable[str],
    group: str,
    *,
    conn: Connection | None = None,
    mode: Mode = "auto",
    on_error: str = "raise",
    config: ConsumerConfig | None = None,
    group_settings: GroupSettings | None = None,
    instance_id: str | None = None,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> TransformStats:
    """Run ``fn`` over ``topics`` as a member of ``group``, writing its outputs exactly once,
    until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``).

    ``on_error``: what an exception of ``fn`` does: ``"raise"`` (the loop stops, the record
    stays unacked for the next owner) or ``"dead_letter"`` (the record goes to its
    partition's dead-letter stream, reason ``transform_error``, and the partition moves on).
    ``config``'s ``auto_commit`` is ignored: the pipeline acks.
    """
    if on_error not in ("raise", "dead_letter"):
        raise ConfigError(f"on_error must be 'raise' or 'dead_letter', got {on_error!r}")
    stop = stop or threading.Event()
    restore = _install_signals(stop) if handle_signals else None
    own = conn is None
    conn = conn or connect()
    stats = TransformStats()
    cfg = (config or ConsumerConfig()).with_changes(auto_commit=False)
    try:
        with (
            Consumer(
                group, topics, conn=conn, config=cfg, group_settings=group_settings,
                instance_id=instance_id,
            ) as consumer,
            Pipeline(consumer, conn, mode=mode) as pipe,
        ):  # fmt: skip
            while not stop.is_set():
                batch = consumer.poll(timeout=0.5)
                moved: set[TopicPartition] = set()
                done: list[Record] = []
                for rec in batch:
                    tp = TopicPartition(rec.topic, rec.partition)
                    if stop.is_set():
                        break
                    if tp in moved:
                        continue
                    if _one(pipe, consumer, fn, rec, on_error, stats, stop):
                        done.append(rec)
                    else:
                        moved.add(tp)
                if done and pipe.mode == "atomic":
                    _forget(consumer, done)
    finally:
        if restore is not None:
            restore()
        if own:
            conn.close()
    return stats


def _one(
    pipe: Pipeline,
    consumer: Consumer,
    fn: Transform,
    rec: Record,
    on_error: str,
    stats: TransformStats,
    stop: threading.Event,
) -> bool:
    """Commit one record (retrying an unknown outcome); False if its partition moved on or
    the loop is stopping before it committed."""
    try:
        outputs = list(fn(rec))
    except Exception as err:
        if on_error == "raise":
            raise
        log.warning("%s/%s@%s: transform raised %r: dead-lettered", rec.topic,
                    rec.partition, rec.id, err)  # fmt: skip
        consumer.dead_letter(rec, "transform_error")
        stats.dead_lettered += 1
        return True
    pause = _RETRY_PAUSE_S
    while True:
        try:
            done = pipe.send_and_commit(rec, outputs)
        except NotOwnerError:
            stats.refused += 1
            return False
        except ConnectionFailedError as err:
            if stop.is_set():
                return False  # unacked: the next owner (or this one, restarted) redoes it
            log.warning("commit of %s/%s@%s: %s; trying again", rec.topic, rec.partition,
                        rec.id, err)  # fmt: skip
            stats.retried += 1
            time.sleep(pause)
            pause = min(pause * 2, _MAX_RETRY_PAUSE_S)
            continue
        stats.committed += 1
        stats.duplicates += done.duplicate
        stats.outputs += sum(1 for w in done.written if w is not None)
        return True


def _forget(consumer: Consumer, records: list[Record]) -> None:
    """Atomic mode acked these on the server already: tell the consumer, which otherwise
    keeps every record handed out since its last commit (the XACKs it sends do nothing)."""
    try:
        consumer.commit(records)
    except (NotOwnerError, ConnectionFailedError) as err:
        log.debug("forgetting committed records: %s", err)


def _install_signals(stop: threading.Event) -> Callable[[], None] | None:
    relay = SignalRelay.setting(stop)
    return relay.restore if relay.install() else None
