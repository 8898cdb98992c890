"""The producer's accumulator: a pure state machine over batches, on an injected clock.

It knows nothing of sockets, threads or event loops (the threaded :class:`~partitions.Producer`
calls it under its lock, :class:`~partitions.AsyncProducer` from its loop), like aiokafka's
``MessageAccumulator``. What it decides:

* **Batching**: records go into the open batch of their partition; a batch is sealed (ready
  to send) when it holds ``batch_size`` records or :data:`MAX_BATCH_BYTES`, when it has
  lingered ``linger_ms``, or at once while a flush or close is waiting.
* **Order per partition**: :meth:`drain` hands out at most one batch per partition (a
  partition with a batch in flight, or with an earlier batch still waiting, is skipped), and
  :meth:`finish` puts a batch to retry back in front of the later batches of its partition.
* **Idempotence**: each batch gets this producer's id and its partition's next sequence
  number when first drained; :meth:`judge` keeps the sequence usable after a failure (a
  refused batch gives its number back, one in doubt changes the producer's id).
* **Time**: retries wait for their back-off (:mod:`partitions._producer.delivery`); a batch
  never sent within ``delivery_timeout_ms`` expires with its partition's last error.

Outcomes are returned as :data:`Completion` lists; the shell resolves them (outside any lock:
resolving runs the user's callbacks).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from partitions._base.durability import Durability
from partitions._base.errors import BufferFullError, ClosedError
from partitions._base.functions import is_missing
from partitions._client.config import ProducerConfig
from partitions._producer.batch import KEY_VALUE_FIELDS, MAX_BATCH_BYTES, Batch, Route
from partitions._producer.delivery import (
    DeliveryPolicy,
    closed_error,
    expiry_error,
    final_error,
    in_doubt,
    is_out_of_seq,
    unconfirmed_error,
)
from partitions._producer.router import StickyPartitioner
from partitions._telemetry.metrics import ProducerMetrics

__all__ = ["HOLD_S", "ROUND_BYTES", "Accumulator", "Completion", "complete"]

log = logging.getLogger("partstream.producer")

# Encoded bytes one drained round takes at most, beyond its first batch: with two senders, a
# paused server buffers at most about twice this from one producer.
ROUND_BYTES = 64 * 1024 * 1024

# A batch due by its linger waits while a round is on the wire, for at most this long from
# that round's start: the round's sender drains again as soon as its replies are in and takes
# everything that arrived meanwhile, across partitions, as one round (what Kafka's producer
# does with ``linger.ms=0``: it sends what accumulated while its previous request was out).
# Past this the wire is taken to be slow, and an idle sender sends them beside that round.
HOLD_S = 0.005

# A round taken while none is on the wire keeps about half of what is due once that is at
# least this many records: the other sender takes the rest at once, so the server runs one
# round while this process packs or reads the other (with a partition on the wire at most
# once, a round of every due partition would leave the server idle between rounds).
SPLIT_RECORDS = 2000

# A resharding can answer MOVED, ASK and TRYAGAIN several times for one batch before its
# slot settles; these attempts come on top of ``ProducerConfig.retries`` on a cluster.
CLUSTER_EXTRA_RETRIES = 20

# (batch, the server's ids or None, the error or None): what resolves a batch's futures.
Completion = tuple[Batch, list[bytes] | None, BaseException | None]

TP = tuple[str, int]


def new_producer_id() -> bytes:
    return uuid.uuid4().hex[:16].encode()


def complete(done: list[Completion]) -> None:
    """Resolve the futures of finished batches (runs the user's callbacks: call it unlocked)."""
    for batch, ids, error in done:
        batch.complete(ids, error)


class Accumulator:
    """Open, ready and in-flight batches of one producer. Not thread-safe: the shell locks."""

    def __init__(
        self,
        config: ProducerConfig,
        clock: Callable[[], float],
        *,
        cluster: bool = False,
        metrics: ProducerMetrics | None = None,
        new_id: Callable[[], bytes] = new_producer_id,
        round_bytes: int = ROUND_BYTES,
    ) -> None:
        self.config = config
        self.clock = clock
        self.policy = DeliveryPolicy.from_config(config)
        self.durability: Durability = config.durability
        self.metrics = metrics
        self._new_id = new_id
        self.pid = new_id() if config.idempotent else b""
        self.cluster = cluster
        self._extra = CLUSTER_EXTRA_RETRIES if cluster else 0
        self._round_bytes = round_bytes
        self._linger = config.linger_ms / 1000.0
        self.batch_size = config.batch_size
        self.buffer_limit = config.buffer_records
        self.open: dict[TP, Batch] = {}
        self.ready: deque[Batch] = deque()
        # Partitions with a batch on the wire: a partition is never in two rounds at once.
        self.inflight: set[TP] = set()
        # When each round on the wire was taken (oldest first): batches due by linger wait
        # for the wire (HOLD_S).
        self._wire: list[float] = []
        self._nudged = 0.0  # when append() last woke a sender for a slow wire
        # How many batches of each partition wait in ``ready``.
        self._queued: dict[TP, int] = {}
        self.buffered = 0  # records accepted and not yet resolved
        self.flushing = 0  # flush() calls waiting: seal every open batch now
        self.closed = False
        self.sticky = StickyPartitioner()
        # Senders' targets (nodes) where a call of the library succeeded since the last sign
        # it may be gone, where the user may send MULTI batches (permitted) or may not
        # (refused): batches go as MULTI + native XADDs where both hold (sender.py).
        self.loaded: set[Any] = set()
        self.permitted: set[Any] = set()
        self.refused: set[Any] = set()
        self._seqs: dict[TP, int] = {}
        # The latest retriable error per partition: what a batch that expired unsent reports.
        self._last_errors: dict[TP, Exception] = {}

    # -- records in -----------------------------------------------------------------------
    def full(self) -> bool:
        return self.buffered >= self.buffer_limit

    def accepts(self) -> bool:
        """Whether a record may be appended now: False while the buffer is full (the shell
        waits for room); ClosedError once closed."""
        if self.closed:
            raise ClosedError("send() on a closed producer")
        return self.buffered < self.buffer_limit

    def full_error(self) -> BufferFullError:
        """What a send() that waited ``block_timeout`` for room raises."""
        return BufferFullError(
            f"producer buffer full ({self.buffer_limit} records unsent) for "
            f"{self.config.block_timeout}s: the server is slow or unreachable"
        )

    def append(
        self,
        route: Route,
        p: int | None,
        region: str | None,
        chunk: tuple[bytes, ...],
        nargs: int,
        nbytes: int | None = None,
    ) -> tuple[Batch, int, bool]:
        """Add one encoded record (its pieces, :func:`~partitions._producer.batch.encode_record`;
        ``nbytes`` their bytes if known) to partition ``p``'s open batch (``p`` None: a keyless
        record, placed by the sticky rule within ``region``). Returns (batch, index in it,
        whether a sender should wake: a first open batch while no round is on the wire, any
        new batch once the wire is slow (:data:`HOLD_S`), or a newly sealed one whose
        partition is not on the wire). While a round is on the wire a record that can wait
        for it wakes nobody: that round's sender drains again when its replies are in."""
        topic = route.topic
        if p is None:
            first, last = route.router.range_for(region)
            p = self.sticky.partition(topic, region, first, last)
        if nbytes is None:
            nbytes = sum(map(len, chunk))
        tp = route.tps[p]
        batch = self.open.get(tp)
        if batch is not None and nargs == KEY_VALUE_FIELDS and batch.shapes is None:
            # The common case, once per record: a key + value record into a batch of them
            # with room (what the general path below does for it, with fewer look-ups).
            size = batch.nbytes + nbytes
            if size <= MAX_BATCH_BYTES:
                index = batch.count
                batch.chunks.extend(chunk)
                batch.count = count = index + 1
                batch.nbytes = size
                self.buffered += 1
                if count < self.batch_size and size < MAX_BATCH_BYTES:
                    return batch, index, False
                self.seal(batch)
                return batch, index, tp not in self.inflight
        wake = False
        if batch is not None and batch.nbytes + nbytes > MAX_BATCH_BYTES:
            self.seal(batch)  # a call stays within MAX_BATCH_BYTES, or holds one record
            batch, wake = None, tp not in self.inflight
        if batch is None:
            now = self.clock()
            batch = Batch(topic, p, route, now, self.policy.deadline(now))
            self.open[tp] = batch
            wire = self._wire
            if not wire:
                wake = wake or len(self.open) == 1  # nobody times a linger yet
            elif now - wire[0] >= HOLD_S and now - self._nudged >= HOLD_S:
                # The wire is slow: an idle sender sends beside it (one nudge per HOLD_S,
                # not one per batch: the sender it wakes takes every batch due).
                self._nudged = now
                wake = True
        index = batch.count
        batch.chunks.extend(chunk)
        if nargs != KEY_VALUE_FIELDS or batch.shapes is not None:
            if batch.shapes is None:
                batch.shapes = [KEY_VALUE_FIELDS] * index
                batch.nargs = KEY_VALUE_FIELDS * index
            batch.shapes.append(nargs)
            batch.nargs += nargs
        batch.count = index + 1
        batch.nbytes += nbytes
        self.buffered += 1
        if batch.count >= self.batch_size or batch.nbytes >= MAX_BATCH_BYTES:
            self.seal(batch)
            # A sender can take it now, unless its partition is on the wire: the sender of
            # that round drains again when it is over (waking an idle one costs a drain).
            wake = wake or tp not in self.inflight
        return batch, index, wake

    def append_many(
        self, route: Route, encoded: list[tuple[int | None, tuple[bytes, ...], int]], start: int
    ) -> tuple[list[tuple[Batch, int]], bool, int]:
        """:meth:`append` the encoded records from ``encoded[start]`` on while the buffer has
        room (at least one): (each one's batch and index in it, whether a sender should
        wake, where the next call goes on)."""
        end = min(len(encoded), start + max(1, self.buffer_limit - self.buffered))
        placed: list[tuple[Batch, int]] = []
        wake = False
        append = self.append
        for i in range(start, end):
            p, chunk, nargs = encoded[i]
            batch, index, woke = append(route, p, None, chunk, nargs)
            placed.append((batch, index))
            wake = wake or woke
        return placed, wake, end

    def seal(self, batch: Batch) -> None:
        tp = (batch.topic, batch.partition)
        del self.open[tp]
        batch.sealed = True
        self.ready.append(batch)
        self._queued[tp] = self._queued.get(tp, 0) + 1
        self.sticky.rotate(batch.topic, batch.partition)

    # -- batches out ----------------------------------------------------------------------
    def drain(self) -> tuple[list[Batch], list[Batch], float | None]:
        """Seal what is due and take a round: (batches to send, at most one per partition;
        batches that expired unsent; when to look again if nothing is due, None = when told).

        The batches to send are in flight until :meth:`finish`; they get their sequence
        numbers here. The expired ones are resolved by :meth:`expire`. A batch due by its
        linger is held while a round is on the wire (at most :data:`HOLD_S` from its start).
        """
        now = self.clock()
        sealing = self.flushing or self.closed
        held = self._wire[0] + HOLD_S if self._wire else 0.0
        if self.open and (sealing or now >= held):
            linger = self._linger
            for batch in list(self.open.values()):
                if sealing or now >= batch.created + linger:
                    self.seal(batch)
        wake: float | None = None
        taken: list[Batch] = []
        expired: list[Batch] = []
        if self.ready:
            rest: deque[Batch] = deque()
            ready, heads = self.ready, len(self._queued)  # partitions with batches waiting
            # A partition is blocked by a batch on the wire, or by an earlier batch still
            # waiting (back-off, full round): its later batches never overtake. Only the
            # first waiting batch of each partition is looked at: the later ones were
            # created later, so they are due (and expire) no sooner, unless the first is a
            # retry past its own deadline (``late``: its later batches are looked at for
            # expiry). Once every waiting partition's first batch was looked at, the rest
            # stays as it is: a backlog of sealed batches costs a drain nothing per batch.
            blocked = set(self.inflight)
            seen: set[TP] = set()
            late: set[TP] = set()
            nbytes = 0
            while ready:
                if len(seen) >= heads and not late:
                    rest.extend(ready)
                    ready.clear()
                    break
                batch = ready.popleft()
                tp = (batch.topic, batch.partition)
                expires = batch.seq == 0 and now >= batch.deadline
                if tp in seen and not (expires and tp in late):
                    rest.append(batch)
                    continue
                if expires:
                    expired.append(batch)  # never sent: failing it cannot reorder anything
                    self._unqueue(tp)
                    continue
                seen.add(tp)
                if batch.seq != 0 and now >= batch.deadline:
                    late.add(tp)
                if tp in blocked or batch.retry_at > now or nbytes >= self._round_bytes:
                    rest.append(batch)
                    # Wake for the end of a back-off, or to expire a batch never sent.
                    due = batch.retry_at if batch.retry_at > now else None
                    if batch.seq == 0:
                        due = batch.deadline
                    if due is not None and (wake is None or due < wake):
                        wake = due
                else:
                    taken.append(batch)
                    nbytes += batch.nbytes
                    self._unqueue(tp)
            self.ready = rest
            if not self._wire and len(taken) > 1:
                taken = self._split(taken)
            for batch in taken:
                self.inflight.add((batch.topic, batch.partition))
                self._sequence(batch)
            if taken:
                taken[0].taken_at = now
                self._wire.append(now)
        if self.open:
            oldest = max(min(b.created for b in self.open.values()) + self._linger, held)
            wake = oldest if wake is None else min(wake, oldest)
        return taken, expired, wake

    def _split(self, taken: list[Batch]) -> list[Batch]:
        """The first half (in records) of ``taken`` once it holds at least SPLIT_RECORDS;
        the rest goes back in front of the waiting batches (each the first of its
        partition, so nothing overtakes)."""
        records = sum(b.count for b in taken)
        if records < SPLIT_RECORDS:
            return taken
        kept = cut = 0
        while 2 * kept < records:
            kept += taken[cut].count
            cut += 1
        self._requeue(taken[cut:])
        return taken[:cut]

    def _requeue(self, batches: list[Batch]) -> None:
        """``batches`` back in front of the waiting ones, in their order."""
        self.ready.extendleft(reversed(batches))
        for b in batches:
            tp = (b.topic, b.partition)
            self._queued[tp] = self._queued.get(tp, 0) + 1

    def _unqueue(self, tp: TP) -> None:
        left = self._queued[tp] - 1
        if left:
            self._queued[tp] = left
        else:
            del self._queued[tp]

    def idle(self) -> bool:
        """Closed with nothing left to send: a sender may stop."""
        return self.closed and not self.ready and not self.open and not self.inflight

    def _sequence(self, batch: Batch) -> None:
        if batch.seq == 0:
            tp = (batch.topic, batch.partition)
            batch.seq = self._seqs.get(tp, 0) + 1
            batch.pid = self.pid
            self._seqs[tp] = batch.seq

    def finish(
        self, sent: list[Batch], retry: list[Batch], expired: list[Batch]
    ) -> list[Completion]:
        """A round is over (its completions resolved): ``retry`` (a subset of ``sent``) goes
        back in front of the later batches of its partitions, the partitions are free again
        and the resolved records leave the buffer. Once closed, nothing is retried: the
        completions of the batches given up are returned."""
        resolved = sum(b.count for b in sent if b.done)
        self.buffered -= resolved + sum(b.count for b in expired)
        abandoned: list[Completion] = []
        if self.closed and retry:  # close() gave up waiting
            abandoned = self.abandon(retry)
        else:
            # Back in front before the partitions are free again: a retried batch goes out
            # before any later batch of its partition.
            self._requeue(retry)
        self.inflight.difference_update((b.topic, b.partition) for b in sent)
        if sent and sent[0].taken_at in self._wire:
            self._wire.remove(sent[0].taken_at)
        return abandoned

    # -- outcomes -------------------------------------------------------------------------
    def settle(
        self,
        group: list[Batch],
        replies: list[Any],
        waits: list[tuple[Any, ...]],
        confirms: list[Any],
        append_s: float,
    ) -> tuple[list[Completion], list[tuple[Batch, Exception]]]:
        """One node's replies: (completions of the batches appended, (batch, error) of the
        others, for :meth:`judge` once the shell reacted to the error)."""
        now = self.clock()
        unconfirmed = unconfirmed_error(self.durability, group, replies, waits, confirms)
        done: list[Completion] = []
        errors: list[tuple[Batch, Exception]] = []
        for batch, reply in zip(group, replies, strict=True):
            if isinstance(reply, list) and unconfirmed is not None:
                # Appended on the primary, not confirmed by its replicas: in doubt. Sent
                # again (same sequence: the script answers with the ids it appended) until
                # confirmed or the delivery timeout; after a failover that lost it, the
                # retry appends it on the new primary.
                batch.in_doubt = True
                reply = unconfirmed
            if isinstance(reply, list):
                if self.metrics is not None:  # before the futures resolve
                    self.metrics.sent(batch, append_s, now)
                ids = reply[1:] if reply[0] == 1 else self._dup_ids(batch, reply)
                done.append((batch, ids, None))
                if self._last_errors:
                    self._last_errors.pop((batch.topic, batch.partition), None)
            else:
                errors.append((batch, reply))
        return done, errors

    def _dup_ids(self, batch: Batch, reply: list[Any]) -> list[bytes]:
        ids: list[bytes] = reply[1:]
        log.info("dropped a retried duplicate batch on %s/%d", batch.topic, batch.partition)
        if len(ids) != batch.count:
            # The original batch was trimmed meanwhile: retention removes the oldest entries
            # first, so the ids the server still had are the batch's last ones (its first
            # records get "0-0": appended once, no longer in the stream).
            ids = [b"0-0"] * (batch.count - len(ids)) + ids
        return ids

    def unrecorded(self, batch: Batch) -> None:
        """``batch`` was appended by its XADDs while the library was missing inside EXEC:
        the server did not record its sequence, so the next batch of the partition would be
        refused as out of sequence. A new identity (its batches start again at 1)."""
        log.info("appended a batch on %s/%d without its sequence record (library missing)",
                 batch.topic, batch.partition)  # fmt: skip
        if self.config.idempotent and batch.pid == self.pid:
            self.pid = self._new_id()
            self._seqs.clear()

    def broken_round(self, batches: list[Batch], err: Exception) -> list[tuple[Batch, Exception]]:
        """A round that failed in the shell itself: every unresolved batch may have been
        written before the failure, so it is in doubt."""
        out = []
        for batch in batches:
            if not batch.done:
                batch.in_doubt = True
                out.append((batch, err))
        return out

    def judge(self, errors: list[tuple[Batch, Exception]]) -> tuple[list[Batch], list[Completion]]:
        """Decide on failed attempts: (batches to send again, each with its ``retry_at``;
        completions of those given up)."""
        retry: list[Batch] = []
        failed: list[Completion] = []
        for batch, err in errors:
            if self._retry(batch, err):
                retry.append(batch)
            else:
                failed.append(self._fail(batch, err))
        return retry, failed

    def _retry(self, batch: Batch, err: Exception) -> bool:
        now = self.clock()
        batch.last_error = err
        batch.in_doubt = batch.in_doubt or in_doubt(err)
        if not is_missing(err):  # a missing library executed nothing: not an attempt
            batch.attempts += 1
        at = self.policy.next_try(err, batch.attempts, now, batch.deadline, self._extra)
        if at is None:
            return False
        batch.retry_at = at
        if self.metrics is not None:
            self.metrics.retried(batch)
        self._last_errors[(batch.topic, batch.partition)] = err
        log.debug(
            "retrying %s/%d (attempt %d) in %.3fs: %s %s",
            batch.topic,
            batch.partition,
            batch.attempts,
            at - now,
            type(err).__name__,
            err,
        )
        return True

    def _fail(self, batch: Batch, err: Exception) -> Completion:
        """Give up on a sent batch, and keep the partition's sequence usable for the next."""
        if self.metrics is not None:
            self.metrics.failed(batch)
        done: Completion = (batch, None, final_error(batch, err, self.clock()))
        if not self.config.idempotent or batch.pid != self.pid:
            return done  # no identity, or it was replaced already: the new one starts afresh
        tp = (batch.topic, batch.partition)
        if batch.in_doubt or in_doubt(err) or is_out_of_seq(err):
            # The batch may be in the stream (or the server forgot the sequence): a new
            # identity, so the next batch can be neither taken for a duplicate of it nor
            # refused as out of sequence.
            self.pid = self._new_id()
            self._seqs.clear()
        elif self._seqs.get(tp) == batch.seq:
            # Refused: the script wrote nothing (it is all-or-nothing), so the server still
            # expects this sequence number; the next batch of the partition takes it.
            self._seqs[tp] = batch.seq - 1
        return done

    def expire(self, expired: list[Batch]) -> list[Completion]:
        """Batches never sent within their delivery timeout fail with their partition's last
        error."""
        out: list[Completion] = []
        for batch in expired:
            last = self._last_errors.get((batch.topic, batch.partition))
            if self.metrics is not None:
                self.metrics.failed(batch)
            error = expiry_error(batch, last, self.config.delivery_timeout_ms)
            out.append((batch, None, error))
        return out

    def abandon(self, batches: list[Batch] | None = None) -> list[Completion]:
        """close() stopped waiting: fail ``batches`` (default: every unsent one) and take
        them out of the buffer."""
        if batches is None:
            batches = [*self.ready, *self.open.values()]
            for batch in self.open.values():
                batch.sealed = True
            self.ready.clear()
            self._queued.clear()
            self.open.clear()
        self.buffered -= sum(b.count for b in batches)
        out: list[Completion] = []
        for batch in batches:
            if self.metrics is not None:
                self.metrics.failed(batch)
            out.append((batch, None, closed_error(batch)))
        return out
