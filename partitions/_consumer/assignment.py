"""What one consumer owns and holds: a pure state object, no sockets, no threads.

The consumer's questions all have their answer here: which partitions it reads and under
which grant (:class:`PartitionState`), what it fetched and has not handed out yet (the
buffer), what it handed out and the caller has not confirmed, which ids are processed and
wait to be acked, and the one record iteration handed out last. The threaded and the asyncio
consumer both drive one :class:`Assignment`; the transitions are unit-tested without a
server (tests/unit/test_assignment.py).

Where a record can be, and how it moves::

    fill() -> buffers --take()--> handed (+ current) --confirm()--> acks --take_acks()--> sent
                 |                   |                                        |
    drop()/drop_buffered(): gone, still pending for the group (redelivered, not counted)
                                                      unknown outcome --> unsent --> next read

A partition leaving (:meth:`Assignment.drop`) takes its buffered, handed-out and pending
records with it: they stay pending for the group, and the next owner delivers them again.

Fairness, as Kafka's fetcher: each partition has its own buffer, only partitions whose buffer
ran dry are read again (:meth:`Assignment.reading`), and :meth:`Assignment.take` hands out
round-robin over the partitions holding records, so one partition's backlog (a takeover)
never holds back the fresh records of the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from operator import attrgetter

from partitions._base.fence import fence_value
from partitions._base.keys import Keys, Layouts, TopicLayout
from partitions._base.records import Record
from partitions._base.types import TopicPartition

# The stream-level consumer name every owner of a partition uses: the group's pending list
# of a partition is then simply "what the group has not acked", whoever read it, and a new
# owner recovers it in id order. Short on purpose: every entry XREADGROUP delivers is
# propagated to the AOF and to replicas as an XCLAIM naming it ("partstream" made the
# consumer's AOF 9 bytes a record larger than a raw loop's, bench/README.md "Issue 18,
# session 7: the consumer's server cost on Valkey"). Recovery reads the pending list of every
# consumer name (XPENDING without a consumer), so entries still pending under an older name
# (a group consumed by an earlier version) are recovered and claimed as before.
STREAM_CONSUMER = "ps"


class PartitionState:
    """What the consumer tracks for one owned partition: its keys, its grant, where it reads."""

    __slots__ = (
        "catching_up",
        "cursor",
        "dlq_key",
        "fence",
        "fence_bytes",
        "fence_key",
        "group",
        "groups_key",
        "last_id",
        "last_read",
        "layout",
        "member_id",
        "next_reclaim",
        "partition",
        "retention",
        "stream",
        "tail",
        "token",
        "topic",
        "tp",
    )  # fmt: skip

    def __init__(
        self,
        keys: Keys,
        group: str,
        tp: TopicPartition,
        member_id: str,
        token: int,
        layout: TopicLayout,
    ) -> None:
        self.tp = tp
        self.topic, self.partition = tp.topic, tp.partition
        self.group, self.member_id, self.token = group, member_id, int(token)
        self.layout = layout
        self.stream = keys.stream(layout, tp.partition)
        self.fence_key = keys.fence(layout, tp.partition)
        self.groups_key = keys.stream_groups(layout, tp.partition)
        self.dlq_key = keys.dlq(layout, tp.partition)
        self.fence = fence_value(member_id, token)
        self.fence_bytes = self.fence.encode()
        # '-': first redeliver every entry the previous owner left unacked (takeover).
        self.cursor = "-"
        self.tail = ""  # last entry id seen by an empty fetch: where a blocking wait starts
        self.last_id: str | None = None  # last record handed out
        self.next_reclaim = 0.0
        # "<max length> <retention ms>" of a safe-retention topic: its reclaim-time reads
        # compute where producers may trim ("~cut"); '' = plain retention, nothing to compute.
        self.retention = ""
        # Assigned (or seeked) here and not yet read to its end: its reads are budgeted
        # while other partitions are caught up (plans.read_counts).
        self.catching_up = True
        self.last_read = 0  # entries its last read returned (the pace of catch-up reads)

    def recover_from_handed(self) -> None:
        """Read again, in id order, what is pending after the last record handed out (a read
        whose reply was lost may have run: its entries are pending but were never handed)."""
        self.cursor = self.last_id or "-"


_partition_of = attrgetter("topic", "partition")


def _tp(r: Record) -> TopicPartition:
    return TopicPartition(r.topic, r.partition)


class Assignment:
    """The owned partitions and every record this consumer holds (see the module docstring).

    Pure and single-threaded: the shells call it from the consumer's own thread or task.
    """

    def __init__(self, keys: Keys, group: str, member_id: str, layouts: Layouts) -> None:
        self.keys, self.group, self.member_id = keys, group, member_id
        self.layouts = layouts  # the topics' key layouts, shared with the member's runner
        self.parts: dict[TopicPartition, PartitionState] = {}
        # Fetched and not handed out yet, per partition in id order; only non-empty lists.
        # The dict's order is the hand-out turn: a partition served goes to the back.
        self._bufs: dict[TopicPartition, list[Record]] = {}
        # Handed out by poll() and not yet committed: the last poll's records with
        # auto-commit, every one since the last commit() without it.
        self.handed: list[Record] = []
        self.current: Record | None = None  # the record iteration handed out last
        self.acks: dict[TopicPartition, list[str]] = {}  # processed, acked on the next call
        # Acks whose call failed with the outcome unknown: sent again (XACK is idempotent)
        # with the next read of their partition, so they do not sit pending until reclaimed.
        self.unsent: dict[TopicPartition, list[str]] = {}
        # Hand-outs recorded by a 'hand' call whose outcome is unknown (id -> deliveries it
        # recorded): none was made, so the next read of the partition takes them back.
        self.unhanded: dict[TopicPartition, dict[str, int]] = {}

    # -- partitions -------------------------------------------------------------------------
    def assign(self, tp: TopicPartition, token: int, retention: str = "") -> PartitionState:
        """Start reading ``tp`` under the grant ``token`` (from its takeover cursor)."""
        layout = self.layouts.of(tp.topic)
        st = PartitionState(self.keys, self.group, tp, self.member_id, token, layout)
        st.retention = retention
        self.parts[tp] = st
        return st

    def owned(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The ones of ``tps`` this consumer reads now."""
        return {tp for tp in tps if tp in self.parts}

    def fence(self, topic: str, partition: int) -> str | None:
        """The grant (``"<member_id> <token>"``) a partition is read under; None: not owned."""
        st = self.parts.get(TopicPartition(topic, partition))
        return None if st is None else st.fence

    def state_of(self, record: Record) -> PartitionState | None:
        return self.parts.get(_tp(record))

    def drop(self, tps: set[TopicPartition]) -> list[TopicPartition]:
        """Stop reading ``tps`` (revoked, lost, or fenced by a newer owner): their buffered,
        handed-out and processed records are forgotten here and stay pending for the group.
        Returns the ones that were owned."""
        owned = [tp for tp in tps if tp in self.parts]
        self.drop_buffered(tps)
        for tp in tps:
            self.parts.pop(tp, None)
            self.acks.pop(tp, None)
            self.unhanded.pop(tp, None)
        self.handed = [r for r in self.handed if _tp(r) not in tps]
        if self.current is not None and _tp(self.current) in tps:
            self.current = None
        return owned

    def drop_buffered(self, tps: set[TopicPartition]) -> None:
        """Forget the records of ``tps`` fetched but not handed out yet."""
        for tp in tps:
            self._bufs.pop(tp, None)

    def seek(self, tp: TopicPartition) -> None:
        """Before a seek of ``tp``: nothing fetched, handed out or processed of it survives."""
        self.drop_buffered({tp})
        self.handed = [r for r in self.handed if _tp(r) != tp]
        self.acks.pop(tp, None)
        st = self.parts.get(tp)
        if st is not None:
            st.catching_up = True

    def reading(self) -> list[PartitionState]:
        """The partitions a fetch reads: those whose buffer ran dry (Kafka's fetcher rule:
        a partition holding records is not fetched again until they are handed out)."""
        bufs = self._bufs
        return [st for tp, st in self.parts.items() if tp not in bufs]

    def refill_due(self) -> bool:
        """Records are buffered while a caught-up partition ran dry: read the dry ones before
        handing out more, so their fresh records do not wait for the others' backlog."""
        if not self._bufs:
            return False
        bufs = self._bufs
        return any(not st.catching_up for tp, st in self.parts.items() if tp not in bufs)

    def waiting(self) -> dict[str, str]:
        """Streams a blocking wait may watch (stream -> the tail id the last fetch saw): the
        partitions that are caught up (no recovery pending)."""
        return {st.stream: st.tail for st in self.parts.values() if st.tail and not st.cursor}

    def recover_from_handed(self) -> None:
        """A read or hand-out failed with its outcome unknown: forget the buffer (it stays
        pending for the group) and re-read every partition from the last record handed out."""
        self._bufs = {}
        for st in self.parts.values():
            st.recover_from_handed()

    def set_retention(self, retention: dict[str, str]) -> None:
        for st in self.parts.values():
            st.retention = retention.get(st.topic, "")

    # -- the buffers ------------------------------------------------------------------------
    def buffered(self) -> bool:
        return bool(self._bufs)

    def fill(self, records: list[Record]) -> None:
        """Add a fetch's records (each partition's in id order) to their partitions' buffers."""
        bufs = self._bufs
        for key, run in groupby(records, _partition_of):
            bufs.setdefault(TopicPartition(*key), []).extend(run)

    def take(self, n: int) -> list[Record]:
        """Up to ``n`` buffered records, round-robin over the partitions holding some (each
        partition's in order; a partition served goes to the back of the turn). A recovered
        record that may be what crashed its last consumer goes out alone (see
        :func:`_suspect`), before anything else."""
        bufs = self._bufs
        if not bufs:
            return []
        for tp, buf in bufs.items():
            if _suspect(buf[0]):
                return self._serve(tp, 1)
        out: list[Record] = []
        turn = list(bufs)
        while turn and len(out) < n:
            share = -(-(n - len(out)) // len(turn))  # ceil: the last ones get the rest
            still = []
            for tp in turn:
                want = min(share, n - len(out))
                if want <= 0:
                    break
                chunk = bufs[tp][:want]
                clean = _before_suspect(chunk) if any(r._claim for r in chunk) else len(chunk)
                if clean:
                    out += self._serve(tp, clean)
                if clean == len(chunk) and tp in bufs:
                    still.append(tp)  # else a suspect is next: it waits for a batch alone
            turn = still
        return out

    def _serve(self, tp: TopicPartition, k: int) -> list[Record]:
        """The first ``k`` buffered records of ``tp``; ``tp`` moves to the back of the turn."""
        buf = self._bufs.pop(tp)
        out = buf[:k]
        del buf[:k]
        if buf:
            self._bufs[tp] = buf
        return out

    def push_front(self, record: Record) -> None:
        """Deliver ``record`` next, before the rest of its partition's buffer (a nack)."""
        tp = _tp(record)
        self._bufs[tp] = [record, *self._bufs.pop(tp, [])]

    @staticmethod
    def claims(out: list[Record]) -> dict[TopicPartition, list[Record]]:
        """The recovered records of ``out`` whose hand-out must be recorded on the server."""
        claims: dict[TopicPartition, list[Record]] = {}
        for r in out:
            if r._claim:
                claims.setdefault(_tp(r), []).append(r)
        return claims

    def recorded(
        self, out: list[Record], gone: set[str], lost: set[TopicPartition]
    ) -> list[Record]:
        """``out`` after its hand-out was recorded: without the ids no longer pending
        (``gone``) and the partitions lost meanwhile, each kept one marked as recorded."""
        kept = []
        for r in out:
            if (r._claim and r.id in gone) or _tp(r) in lost:
                continue
            r._recorded()
            kept.append(r)
        return kept

    def handed_out(self, out: list[Record]) -> None:
        """``out`` goes to the application now: it is where each partition resumes."""
        last = {(r.topic, r.partition): r.id for r in out}
        for key, rid in last.items():
            st = self.parts.get(TopicPartition(*key))
            if st is not None:
                st.last_id = rid

    # -- handed out, processed, acked ---------------------------------------------------------
    def note_poll(self, batch: list[Record], auto_commit: bool) -> None:
        """Remember a poll's records as handed out and not yet committed."""
        self.handed = batch if auto_commit else self.handed + batch

    def confirm_handed(self, tps: set[TopicPartition] | None = None) -> None:
        """The caller came back (auto-commit): the handed-out records (of ``tps``) are
        processed and acked with the next call."""
        if tps is None:
            done, self.handed = self.handed, []
        else:
            done = [r for r in self.handed if _tp(r) in tps]
            self.handed = [r for r in self.handed if _tp(r) not in tps]
        self.confirm(done)

    def confirm_all(self) -> None:
        """commit() without records: everything handed out, the current record included."""
        handed = self.handed + ([self.current] if self.current else [])
        self.handed, self.current = [], None
        self.confirm(handed)

    def confirm_some(self, records: list[Record]) -> None:
        """Queue the acks of ``records``, which are no longer outstanding."""
        if self.current is not None and self.current in records:
            self.current = None
        # Without this a caller that commits record by record (the runner) would grow the
        # handed-out list forever.
        done = {id(r) for r in records}
        self.handed = [r for r in self.handed if id(r) not in done]
        self.confirm(records)

    def confirm(self, records: Iterable[Record]) -> None:
        """Queue the acks of ``records``; those of partitions no longer owned are dropped."""
        acks, parts = self.acks, self.parts
        key: tuple[str, int] = ("", -1)
        ids: list[str] | None = None
        for r in records:
            if r.partition != key[1] or r.topic != key[0]:
                key = (r.topic, r.partition)
                ids = acks.setdefault(TopicPartition(*key), []) if key in parts else None
            if ids is not None:
                ids.append(r.id)

    def forget(self, record: Record) -> None:
        """``record`` is settled otherwise (nacked, dead-lettered): not to be acked."""
        if self.current is record:
            self.current = None
        self.handed = [r for r in self.handed if r is not record]

    def take_acks(self, only: set[TopicPartition] | None = None) -> dict[TopicPartition, list[str]]:
        """Remove and return the queued acks (of ``only``) of partitions still owned."""
        if only is not None:
            acks = {tp: self.acks.pop(tp) for tp in only if tp in self.acks}
        else:
            acks, self.acks = self.acks, {}
        return {tp: ids for tp, ids in acks.items() if tp in self.parts}

    def acks_for_read(self) -> dict[TopicPartition, list[str]]:
        """The acks a read of every owned partition carries: the unsent ones first (in the
        order they were processed), then the queued ones. The read's outcome decides which
        of them are dropped (see :meth:`acks_sent`)."""
        if self.unsent:
            for tp in self.parts:
                ids = self.unsent.get(tp)
                if ids:
                    self.acks.setdefault(tp, [])[:0] = ids
            self.unsent.clear()
        return self.acks

    def acks_sent(self, tps: Iterable[TopicPartition]) -> None:
        """The calls of ``tps`` ran: their acks are the server's now."""
        for tp in tps:
            self.acks.pop(tp, None)

    def not_handed(self, tp: TopicPartition, handed: list[tuple[str, int]]) -> None:
        """A ``hand`` call recording ``handed`` (id, deliveries) failed with its outcome
        unknown: nothing was handed out; the next read of ``tp`` takes the records back."""
        if handed and tp in self.parts:
            self.unhanded.setdefault(tp, {}).update(handed)

    def not_sent(self, tp: TopicPartition, ids: list[str]) -> None:
        """A call carrying acks of ``tp`` did not run or its outcome is unknown."""
        if ids:
            self.unsent.setdefault(tp, []).extend(ids)


def _suspect(r: Record) -> bool:
    """A recovered record handed out before and never acked (its consumer crashed, or the
    handler nacked it): it goes out alone, and a batch stops before one, so that if it is
    what crashes the process only its own hand-out is recorded, not those of the records
    beside it, and a crash-looping record reaches the dead-letter stream alone."""
    return r._claim and r.deliveries > 1


def _before_suspect(records: list[Record]) -> int:
    """How many of ``records`` come before the first suspect."""
    for i, r in enumerate(records):
        if _suspect(r):
            return i
    return len(records)
