"""Key-ordered concurrency, decided without threads: which records may start now.

A worker pool (threads for a sync handler, tasks for an async one) asks :meth:`take` for
records to start and reports each one :meth:`finish`-ed. The scheduler keeps three promises:

* at most ``concurrency`` records run at once;
* records of one *lane* run one after another, in the order they were offered (a
  partition's id order, as the consumer hands them out), never two at a time;
* nothing is lost from view: every offered record is queued, running, deferred, or was
  finished or dropped by the caller, and :meth:`running` / :meth:`queued` say how many per
  partition (a rebalance waits on exactly these);
* a record is held once: offering one again while it is held (the server redelivered it, a
  reclaim of an entry pending for long) returns it as a duplicate instead of queueing it.

A running record may be *deferred* (a non-blocking retry): it leaves its lane, so the lane's
next record may start, until :meth:`resume` puts it back at the front of its lane.

The lane of a record depends on ``ordering``: ``"key"`` (the default) is (topic, partition,
key), so different keys of one partition run side by side and one key keeps its order;
records without a key share their partition's keyless lane, so they keep partition order
among themselves. ``"partition"`` is (topic, partition): no concurrency within a partition.
``"unordered"`` gives every record its own lane.

Not thread-safe: the shell holds its lock around every call. Pure: unit-tested without a
server (tests/unit/test_scheduler.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Literal, TypeAlias

from partitions._base.errors import ConfigError
from partitions._base.records import Record
from partitions._base.types import TopicPartition

Ordering: TypeAlias = Literal["key", "partition", "unordered"]
ORDERINGS: tuple[Ordering, ...] = ("key", "partition", "unordered")


class KeyedScheduler:
    """Start records up to ``concurrency`` at a time, one at a time per lane (see module)."""

    def __init__(self, concurrency: int, ordering: Ordering = "key") -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, got {concurrency!r}")
        if ordering not in ORDERINGS:
            raise ConfigError(f"ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}")
        self.concurrency = concurrency
        self.ordering: Ordering = ordering
        self._lanes: dict[Hashable, deque[Record]] = {}
        # Lanes with a queued head and nothing running, in the order they became ready:
        # a lane that just finished goes to the back, so no key starves the others.
        self._ready: deque[Hashable] = deque()
        self._busy: set[Hashable] = set()
        self._running: dict[int, Record] = {}  # id(record) -> record
        self._queued_per: dict[TopicPartition, int] = {}
        self._running_per: dict[TopicPartition, int] = {}
        self._deferred: dict[int, Record] = {}  # id(record) -> record
        self._held: set[tuple[str, int, str]] = set()  # (topic, partition, id) of all above

    # -- feeding ------------------------------------------------------------------------------
    def offer(self, records: Iterable[Record]) -> list[Record]:
        """Queue ``records`` behind what their lanes already hold; returns those already held
        (queued, running or deferred under the same id), which are not queued again."""
        duplicates: list[Record] = []
        for rec in records:
            ident = (rec.topic, rec.partition, rec.id)
            if ident in self._held:
                duplicates.append(rec)
                continue
            self._held.add(ident)
            self._enqueue(rec, front=False)
        return duplicates

    def take(self) -> list[Record]:
        """The records to start now; each is running until :meth:`finish` is called for it."""
        out: list[Record] = []
        while self._ready and len(self._running) < self.concurrency:
            lane = self._ready.popleft()
            queue = self._lanes[lane]
            rec = queue.popleft()
            self._busy.add(lane)
            self._running[id(rec)] = rec
            tp = TopicPartition(rec.topic, rec.partition)
            self._dec(self._queued_per, tp)
            self._running_per[tp] = self._running_per.get(tp, 0) + 1
            out.append(rec)
        return out

    def finish(self, rec: Record) -> None:
        """``rec`` is done (handled, or failed for good): its lane's next record may start."""
        self._release(rec)
        self._held.discard((rec.topic, rec.partition, rec.id))

    def defer(self, rec: Record) -> None:
        """``rec`` (running) waits outside its lane for :meth:`resume`; the lane moves on."""
        self._release(rec)
        self._deferred[id(rec)] = rec

    def resume(self, rec: Record) -> bool:
        """Put a deferred ``rec`` back at the front of its lane; False if it was dropped."""
        if self._deferred.pop(id(rec), None) is None:
            return False
        self._enqueue(rec, front=True)
        return True

    def _enqueue(self, rec: Record, *, front: bool) -> None:
        lane = self._lane(rec)
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
        if not queue and lane not in self._busy:
            self._ready.append(lane)
        if front:
            queue.appendleft(rec)
        else:
            queue.append(rec)
        tp = TopicPartition(rec.topic, rec.partition)
        self._queued_per[tp] = self._queued_per.get(tp, 0) + 1

    def _release(self, rec: Record) -> None:
        if self._running.pop(id(rec), None) is None:
            raise KeyError(f"{rec.topic}/{rec.partition} {rec.id} is not running")
        self._dec(self._running_per, TopicPartition(rec.topic, rec.partition))
        lane = self._lane(rec)
        self._busy.discard(lane)
        queue = self._lanes.get(lane)
        if queue:
            self._ready.append(lane)
        elif queue is not None:
            del self._lanes[lane]

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Record]:
        """Forget the queued (not started) and deferred records of ``partitions`` and return
        them; their running records stay running (the caller waits for them or gives them up)."""
        gone = set(partitions)
        dropped: list[Record] = []
        for key, rec in list(self._deferred.items()):
            if TopicPartition(rec.topic, rec.partition) in gone:
                dropped.append(self._deferred.pop(key))
        for lane in list(self._lanes):
            queue = self._lanes[lane]
            if not queue or TopicPartition(queue[0].topic, queue[0].partition) not in gone:
                continue  # a lane holds records of one partition only
            dropped.extend(queue)
            queue.clear()
            if lane not in self._busy:
                del self._lanes[lane]
        if dropped:
            self._ready = deque(lane for lane in self._ready if self._lanes.get(lane))
            for tp in gone:
                self._queued_per.pop(tp, None)
            for rec in dropped:
                self._held.discard((rec.topic, rec.partition, rec.id))
        return dropped

    # -- reading ------------------------------------------------------------------------------
    def running(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Records started and not finished (of ``partitions``, or of all)."""
        if partitions is None:
            return len(self._running)
        return sum(self._running_per.get(tp, 0) for tp in set(partitions))

    def queued(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Records offered and not started (of ``partitions``, or of all)."""
        if partitions is None:
            return sum(self._queued_per.values())
        return sum(self._queued_per.get(tp, 0) for tp in set(partitions))

    def deferred(self) -> int:
        """Records waiting outside their lane for :meth:`resume`."""
        return len(self._deferred)

    def partitions(self) -> set[TopicPartition]:
        """The partitions with records queued, running or deferred."""
        deferred = {TopicPartition(r.topic, r.partition) for r in self._deferred.values()}
        return set(self._queued_per) | set(self._running_per) | deferred

    def __len__(self) -> int:
        """Records held: queued, running or deferred."""
        return len(self._running) + self.queued() + len(self._deferred)

    def _lane(self, rec: Record) -> Hashable:
        if self.ordering == "key":
            return (rec.topic, rec.partition, rec.key)
        if self.ordering == "partition":
            return (rec.topic, rec.partition)
        return id(rec)

    @staticmethod
    def _dec(counts: dict[TopicPartition, int], tp: TopicPartition) -> None:
        left = counts[tp] - 1
        if left:
            counts[tp] = left
        else:
            del counts[tp]
