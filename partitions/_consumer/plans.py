"""The plans of a fetch, a hand-out and an ack, and what their replies mean: pure functions.

A plan is the list of script calls (:mod:`partitions._consumer.calls`) one round trip sends,
built from an :class:`~partitions._consumer.assignment.Assignment`; settling a plan with the
replies the server gave (one per call, a redirect error in place of a call whose cluster slot
was moving: it did not run) returns an outcome and moves the assignment on: cursors, tails,
which acks the server has now and which must be sent again. Nothing here does I/O; the shells
send the commands. tests/unit/test_fetch_plan.py settles plans with recorded replies.

The fast path of a steady-state fetch (single node, no recovery, no reclaim due) is planned
here too: WATCH the fences, check them, then MULTI / XACK ... / one XREADGROUP / EXEC. If a
fence changes before EXEC the transaction does not run at all, so it is exactly as fenced as
``consume.lua``, without the cost of copying every entry through Lua. The WATCH and check of
the next fetch ride behind the EXEC (EXEC ends every WATCH, so they must come after it): on
the same connection, unbroken, the next transaction needs no round trip of its own first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from partitions._base.errors import NotOwnerError, StateLostError
from partitions._base.records import Record
from partitions._base.replies import (
    FetchResult,
    ack_result,
    fetch_result,
    hand_result,
    records_from_read,
    retry_result,
)
from partitions._base.types import TopicPartition
from partitions._client import wire
from partitions._consumer.assignment import STREAM_CONSUMER, Assignment, PartitionState
from partitions._consumer.calls import ScriptCall, ack_call, hand_call, read_call, reclaim_call
from partitions._telemetry.metrics import ConsumerMetrics

Refused = list[tuple[PartitionState, FetchResult]]

# Records one fetch reads, in all, from the partitions that are catching up (taken over or
# seeked here, not yet read to their end) while other partitions are caught up. A dead
# member's backlog (its unacked entries and all that came during the session timeout) then
# arrives in slices, and the caught-up partitions are read between the slices, not after the
# whole backlog. Each catching-up partition reads at most CATCH_UP_PACE times what a
# caught-up partition read in its last fetch (their traffic: a slice then costs a fetch
# about what a steady one costs, so the caught-up partitions' records wait about as long
# as before; a slice of 256 beside fetches of a few records made them wait 2-3x longer), and
# at least CATCH_UP_MIN, so none of them starves and a backlog beside idle partitions still
# drains.
CATCH_UP_BUDGET = 256
CATCH_UP_MIN = 8
CATCH_UP_PACE = 2
# While every caught-up partition read nothing in its last fetch (idle: no record of theirs
# waits behind a slice), each catching-up partition reads CATCH_UP_PACE times its own last
# read instead (8, 16, 32, ...), the slices together within CATCH_UP_IDLE_BUDGET records a
# fetch; the first record a caught-up partition reads brings the slices back to its pace.
# With a fixed CATCH_UP_MIN there, the tail of a backlog beside an idle partition (the consume
# bench: the first partition at its end, 15 others with a few hundred entries left) went in
# fetches of 8 records a partition, ~100 transactions for the last 4% of 200,000 records
# against the raw loop's 1-2 (bench/README.md, "Issue 18, session 8"). 1,024 records are a
# fetch of ~5-10 ms on a local server: what a record arriving on an idle partition may wait
# for, at most, beside a backlog.
CATCH_UP_IDLE_BUDGET = 1024
# The tail of a read that ended its partition's recovery (consume.lua): new entries were not
# read (the next fetch reads them natively), so it says nothing about the stream's end.
RECOVERED = "0"
# An admin's "reclaim stuck entries now" request (groups.reclaim_now) is read by the fast
# path's fence check at most this often, not by every fetch: asked on every partition it was
# half the check's commands (16 of 33 for 16 partitions), for a request a person makes and
# waits for on a scale of seconds. A partition found asked leaves the watched set, so its
# next fetch takes the script path, which serves the request (consume.lua).
ASKS_EVERY_S = 0.1


class Tally:
    """What the consumer's calls did: counters for its users, and its client metrics."""

    def __init__(self, metrics: ConsumerMetrics | None = None) -> None:
        self.metrics = metrics
        self.refused_acks = 0  # acks the fence refused (we had lost the partition)
        self.dead_lettered = 0
        self.reclaimed = 0  # entries delivered again by reclaim passes (periodic or asked)

    def acked(self, topic: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.acked(topic, n)

    def dead(self, topic: str, n: int) -> None:
        self.dead_lettered += n
        if self.metrics is not None:
            self.metrics.dead_lettered(topic, n)

    def refuse(self, st: PartitionState, res: FetchResult, n_acks: int, refused: Refused) -> None:
        """A call the fence refused: its acks are counted as refused. State lost raises."""
        if res.status == -1:
            raise lost_error(st, res.detail)
        self.refused_acks += n_acks
        if self.metrics is not None:
            self.metrics.refused(st.topic, n_acks)
        refused.append((st, res))


def ran(reply: Any) -> bool:
    """False for a call the cluster could not serve (its redirect error stands in place)."""
    return not isinstance(reply, Exception)


# -- fetch --------------------------------------------------------------------------------
def read_counts(a: Assignment, parts: list[PartitionState], count: int) -> list[int]:
    """The COUNT of each of ``parts``' reads: ``count``, but the catching-up ones read within
    :data:`CATCH_UP_BUDGET` (shared) and :data:`CATCH_UP_PACE` x the caught-up partitions'
    last reads while some owned partition is caught up (when every partition is behind there
    is nobody to keep waiting, and the backlog is read at full speed). While the caught-up
    ones are idle (their last reads all 0), each catching-up one reads CATCH_UP_PACE x its own
    last read, within :data:`CATCH_UP_IDLE_BUDGET` (shared)."""
    behind = sum(1 for st in parts if st.catching_up)
    if not behind:
        return [count] * len(parts)
    steady = [st.last_read for st in a.parts.values() if not st.catching_up]
    if not steady:
        return [count] * len(parts)
    total = sum(steady)
    if total:
        pace = -(-CATCH_UP_PACE * total // len(steady))  # ceil
        each = min(count, max(CATCH_UP_MIN, min(CATCH_UP_BUDGET // behind, pace)))
        return [each if st.catching_up else count for st in parts]
    share = CATCH_UP_IDLE_BUDGET // behind
    return [
        min(count, max(CATCH_UP_MIN, min(share, CATCH_UP_PACE * st.last_read)))
        if st.catching_up
        else count
        for st in parts
    ]


def caught_up(st: PartitionState, asked: int, got: int) -> None:
    """A read of ``st`` for ``asked`` entries returned ``got``: fewer, with nothing left to
    recover, means it reached the end of its stream. ``got`` is its pace (read_counts)."""
    st.last_read = got
    if st.catching_up and got < asked and not st.cursor:
        st.catching_up = False


@dataclass(slots=True)
class FetchPlan:
    """One fenced read per partition read, each carrying the partition's pending acks."""

    calls: list[ScriptCall]
    counts: list[int] = field(default_factory=list)  # each read's COUNT (caught_up)

    def commands(self) -> list[tuple[Any, ...]]:
        return [c.command() for c in self.calls]

    def settle(
        self, a: Assignment, replies: list[Any], tally: Tally
    ) -> tuple[list[Record], Refused]:
        """The records read (recovered ones first per partition) and the refused partitions."""
        records: list[Record] = []
        refused: Refused = []
        counts = self.counts or [0] * len(self.calls)
        for call, reply, asked in zip(self.calls, replies, counts, strict=True):
            if not ran(reply):
                continue  # its slot is moving: nothing ran; read and ack it next time
            st = call.st
            a.acks_sent((st.tp,))
            if call.handed:
                a.unhanded.pop(st.tp, None)  # taken back (or refused: the partition goes)
            res = fetch_result(st.topic, st.partition, reply)
            if res.status != 1:
                tally.refuse(st, res, len(call.acks), refused)
                continue
            st.cursor = res.cursor
            st.tail = res.tail
            if res.tail != RECOVERED:  # a read that ended a recovery read nothing new
                caught_up(st, asked, len(res.records) + res.dead)
            tally.dead(st.topic, res.dead)
            tally.acked(st.topic, res.acked)
            tally.reclaimed += res.reclaimed
            if res.records:
                records += res.records
        return records, refused


def plan_fetch(
    a: Assignment, now: float, *, count: int, start: str, max_deliveries: int, reclaim_ms: int
) -> FetchPlan:
    """Read every partition whose buffer ran dry, the catching-up ones within their budget
    (:func:`read_counts`); a reclaim pass rides along where one is due."""
    acks = a.acks_for_read()
    calls = []
    parts = a.reading()
    counts = read_counts(a, parts, count)
    for st, n in zip(parts, counts, strict=True):
        reclaim = 0
        if reclaim_ms and now >= st.next_reclaim:
            reclaim = reclaim_ms
            st.next_reclaim = now + reclaim_every(reclaim_ms)
        ids = acks.get(st.tp) or []  # dropped only once the call ran
        unhand = a.unhanded.get(st.tp)  # likewise
        calls.append(
            read_call(
                st,
                count=n,
                max_deliveries=max_deliveries,
                reclaim_ms=reclaim,
                start=start,
                acks=ids,
                unhand=list(unhand.items()) if unhand else None,
            )
        )
    return FetchPlan(calls, counts)


def reclaim_every(reclaim_ms: int) -> float:
    """Seconds between a partition's periodic reclaim passes."""
    return min(reclaim_ms / 4000, 5.0)


# -- a reclaim pass on its own (single node) ----------------------------------------------
def reclaim_due(parts: list[PartitionState], reclaim_ms: int, now: float) -> list[PartitionState]:
    """The partitions of ``parts`` whose periodic reclaim pass is due."""
    if not reclaim_ms:
        return []
    return [st for st in parts if now >= st.next_reclaim]


@dataclass(slots=True)
class ReclaimPlan:
    """One ``reclaim`` call per partition due: its stuck entries, not its new ones (the fast
    path reads those natively; folded into a scripted read they would go through Lua)."""

    calls: list[ScriptCall]

    def settle(self, replies: list[Any], tally: Tally) -> tuple[list[Record], Refused]:
        """The entries recovered (each marked for a recorded hand-out) and the refused
        partitions; cursors and tails stay as they were (nothing new was read)."""
        records: list[Record] = []
        refused: Refused = []
        for call, reply in zip(self.calls, replies, strict=True):
            if not ran(reply):
                continue
            st = call.st
            res = fetch_result(st.topic, st.partition, reply)
            if res.status != 1:
                tally.refuse(st, res, 0, refused)
                continue
            tally.dead(st.topic, res.dead)
            tally.reclaimed += res.reclaimed
            records += res.records
        return records, refused


def plan_reclaim(
    parts: list[PartitionState], now: float, *, count: int, max_deliveries: int, reclaim_ms: int
) -> ReclaimPlan:
    calls = []
    for st in parts:
        st.next_reclaim = now + reclaim_every(reclaim_ms)
        calls.append(
            reclaim_call(st, count=count, max_deliveries=max_deliveries, reclaim_ms=reclaim_ms)
        )
    return ReclaimPlan(calls)


# -- hand-out -----------------------------------------------------------------------------
@dataclass(slots=True)
class HandOutcome:
    gone: set[str] = field(default_factory=set)  # no longer pending: not to hand out
    refused: Refused = field(default_factory=list)
    again: set[TopicPartition] = field(default_factory=set)  # did not run: hand out none


@dataclass(slots=True)
class HandPlan:
    """Record, before they are handed out, the hand-out of recovered records (so a record
    that crashes its consumer is counted every time, one that only sat in a buffer never)."""

    calls: list[ScriptCall]

    def unknown(self, a: Assignment) -> None:
        """The round trip failed with its outcome unknown: its acks go again later, and the
        hand-outs it may have recorded are taken back (none was made)."""
        for call in self.calls:
            a.not_sent(call.st.tp, call.acks)
            a.not_handed(call.st.tp, call.handed)

    def settle(self, a: Assignment, replies: list[Any], tally: Tally) -> HandOutcome:
        out = HandOutcome()
        for call, reply in zip(self.calls, replies, strict=True):
            st = call.st
            if not ran(reply):  # its slot is moving: nothing ran
                a.not_sent(st.tp, call.acks)
                out.again.add(st.tp)
                st.recover_from_handed()
                continue
            res = hand_result(reply)
            if res.status != 1:
                tally.refuse(st, FetchResult(res.status, res.detail), len(call.acks), out.refused)
                continue
            tally.acked(st.topic, res.acked)
            out.gone |= res.ids
        return out


def plan_hand(a: Assignment, claims: dict[TopicPartition, list[Record]]) -> HandPlan:
    """One ``hand`` call per partition of ``claims``; the partition's queued acks ride along."""
    calls = []
    for tp, recs in claims.items():
        ids = a.acks.pop(tp, None) or []
        calls.append(hand_call(a.parts[tp], ids, recs))
    return HandPlan(calls)


# -- ack ----------------------------------------------------------------------------------
@dataclass(slots=True)
class AckPlan:
    """The acks of a commit, one ``ack`` call per partition."""

    calls: list[ScriptCall]

    def unknown(self, a: Assignment) -> None:
        for call in self.calls:
            a.not_sent(call.st.tp, call.acks)

    def settle(self, a: Assignment, replies: list[Any], tally: Tally) -> Refused:
        refused: Refused = []
        for call, reply in zip(self.calls, replies, strict=True):
            if not ran(reply):  # its slot is moving: nothing ran
                a.not_sent(call.st.tp, call.acks)
                continue
            if call.handed:
                a.unhanded.pop(call.st.tp, None)  # taken back (or refused: the partition goes)
            res = ack_result(reply)  # a read of nothing answers {1, acked, ...} too
            if res.status != 1:
                tally.refuse(call.st, res, len(call.acks), refused)
            else:
                tally.acked(call.st.topic, res.acked)
        return refused


def plan_ack(
    a: Assignment, acks: dict[TopicPartition, list[str]],
    only: set[TopicPartition] | None = None,
) -> AckPlan:  # fmt: skip
    """An ``ack`` call per partition of ``acks``; where hand-outs of a lost ``hand`` call
    wait to be taken back (of ``only``, default all), a ``read`` of nothing instead, carrying
    the acks and the take-back: a commit before a revocation, a loss or a close must not
    leave a count for a hand-out never made (the next owner would judge the entry by it)."""
    calls = []
    back = {tp: pairs for tp, pairs in a.unhanded.items() if only is None or tp in only}
    for tp in dict.fromkeys([*acks, *back]):
        ids, pairs = acks.get(tp) or [], back.get(tp)
        if tp not in a.parts or not (ids or pairs):
            continue
        if pairs:
            calls.append(read_call(a.parts[tp], count=0, max_deliveries=0, reclaim_ms=0,
                                   start="0", acks=ids, unhand=list(pairs.items())))  # fmt: skip
        else:
            calls.append(ack_call(a.parts[tp], ids))
    return AckPlan(calls)


# -- retry, dead letters, seek ------------------------------------------------------------
def settle_ids(call: ScriptCall, reply: Any, what: str, tally: Tally) -> set[str]:
    """A ``retry``/``dead`` reply: the ids kept for another hand-out."""
    st = call.st
    res = retry_result(reply)
    if res.status == 0:
        raise NotOwnerError(f"{what} {st.topic}/{st.partition}: {res.detail} owns it now")
    if res.status == -1:
        raise lost_error(st, res.detail)
    tally.dead(st.topic, res.dead)
    return res.ids


def settle_seek(st: PartitionState, reply: Any) -> str:
    """A fenced seek's reply: the previous last-delivered id; reading restarts there."""
    status = int(reply[0])
    detail = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    if status == 0:
        raise NotOwnerError(f"cannot seek {st.topic}/{st.partition}: {detail} owns it")
    if status != 1:
        raise StateLostError(f"cannot seek {st.topic}/{st.partition}: the {detail} is gone")
    st.cursor, st.tail = "", ""
    return detail


# -- the fast path --------------------------------------------------------------------------
def fast_ok(parts: list[PartitionState], reclaim_ms: int, now: float) -> bool:
    """Steady state: nothing to recover, no reclaim due (the caller checks single node)."""
    if not parts:
        return False
    return all(not st.cursor and not (reclaim_ms and now >= st.next_reclaim) for st in parts)


def fast_check(parts: list[PartitionState], group: str, asks: bool = True) -> list[tuple[Any, ...]]:
    """WATCH the fences and read them, and (``asks``) read an admin's "reclaim now"
    requests (:data:`ASKS_EVERY_S`)."""
    check: list[tuple[Any, ...]] = [("WATCH", *[st.fence_key for st in parts])]
    check += [("HGET", st.fence_key, group) for st in parts]
    if asks:  # an admin's "reclaim stuck entries now" request: consume.lua serves it
        check += [("HGET", st.groups_key, f"{group}:reclaim") for st in parts]
    return check


def fast_checked(parts: list[PartitionState], answers: list[Any]) -> bool:
    """True if every fence holds our grant and no reclaim was asked (else: script path)."""
    return len(fast_held(parts, answers)) == len(parts)


def fast_held(parts: list[PartitionState], answers: list[Any]) -> set[PartitionState]:
    """The partitions of :func:`fast_check`'s ``answers`` whose fence, watched, holds our
    grant with no reclaim asked (where the check read the requests): a transaction over them
    may follow on that connection. Their states, not their names: a partition granted again
    is a new state, checked anew."""
    n = len(parts)
    if len(answers) not in (n + 1, 2 * n + 1) or isinstance(answers[0], Exception):
        return set()  # no WATCH: nothing is guarded
    held = answers[1 : n + 1]
    asked = answers[n + 1 :] or [None] * n  # requests not read by this check
    return {
        st
        for st, h, r in zip(parts, held, asked, strict=True)
        if h == st.fence_bytes and not r and not isinstance(r, Exception)
    }


@dataclass(slots=True)
class FastPlan:
    """The transaction: the queued acks, then one XREADGROUP over the streams read (two
    when the catching-up ones read within their budget: COUNT is per call); then, after
    EXEC, the next fetch's WATCH and check over ``watch`` (every owned partition)."""

    parts: list[PartitionState]
    acking: list[PartitionState]
    txn: list[Any]  # command tuples, or their packed bytes (PackCache)
    reads: list[tuple[list[PartitionState], int]] = field(default_factory=list)
    watch: list[PartitionState] = field(default_factory=list)
    check: list[Any] = field(default_factory=list)  # fast_check(watch)
    # A blocking XREAD in front (wait_read): the transaction runs when it returns, on the
    # server, with no round trip between the wake-up and the read.
    wait: list[Any] = field(default_factory=list)

    def commands(self) -> list[Any]:
        return self.wait + self.txn + self.check

    def split(self, replies: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """The wait's reply (none, or one), the transaction's, and the next check's."""
        w, t = len(self.wait), len(self.wait) + len(self.txn)
        return replies[:w], replies[w:t], replies[t:]

    def settle(self, a: Assignment, replies: list[Any], tally: Tally) -> list[Record] | None:
        """The records read, or None if the transaction did not run (a fence changed
        meanwhile, or a group is missing: the script path finds out). ``replies``: the
        transaction's (:meth:`split`)."""
        out = replies[-1]
        if any(isinstance(r, Exception) for r in replies) or out is None:
            return None
        if any(isinstance(r, Exception) for r in out):
            return None
        a.acks_sent(st.tp for st in self.parts)
        for st, acked in zip(self.acking, out, strict=False):  # XACK replies, then the reads
            tally.acked(st.topic, int(acked))
        records: list[Record] = []
        for (parts, count), reply in zip(self.reads, out[len(self.acking) :], strict=True):
            got: dict[bytes, Any] = {}
            if reply:  # RESP3 answers a map {stream: entries}, RESP2 a list of pairs
                got = reply if isinstance(reply, dict) else dict(reply)
            for st in parts:
                entries = got.get(st.stream.encode())
                caught_up(st, count, len(entries) if entries else 0)
                if entries:
                    # The group's last delivered id is now the last entry read: a wait from
                    # there misses nothing (a read with nothing new leaves the tail as is).
                    last = entries[-1][0]
                    st.tail = last.decode() if isinstance(last, bytes) else str(last)
                    records += records_from_read(st.topic, st.partition, entries)
        return records


class PackCache:
    """The RESP of the commands fast fetches send over and over, packed once: the fence
    check of every owned partition and the reads of a steady assignment are the same
    commands each fetch (packing the check of 16 partitions costs ~100 us of Python, a
    fetch's whole round trip on a local server a few times that). An item of an exchange's
    commands may be such packed bytes (:class:`~partitions._consumer.ops.Exchange`)."""

    LIMIT = 256

    def __init__(self) -> None:
        self._packed: dict[tuple[Any, ...], bytes] = {}

    def __call__(self, command: tuple[Any, ...]) -> bytes:
        got = self._packed.get(command)
        if got is None:
            if len(self._packed) >= self.LIMIT:  # the assignment changed a lot: start over
                self._packed.clear()
            got = self._packed[command] = wire.pack(command)
        return got


def wait_read(waiting: dict[str, str], block_ms: int) -> tuple[Any, ...]:
    """A blocking read of one entry after each tail: it returns once any stream has one."""
    return ("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *waiting, *waiting.values())


def plan_fast(
    a: Assignment,
    parts: list[PartitionState],
    count: int,
    packed: PackCache | None = None,
    wait: tuple[Any, ...] | None = None,
    asks: bool = True,
) -> FastPlan:
    """The fast fetch of ``parts``; with ``packed``, the commands that repeat from fetch to
    fetch (the reads, the next check) go as packed bytes from it; with ``wait`` (a
    :func:`wait_read`) in front, it reads what woke the wait; ``asks``: the next check reads
    the reclaim requests too (:data:`ASKS_EVERY_S`)."""
    acks = a.acks_for_read()
    group = a.group
    same: Any = packed if packed is not None else (lambda command: command)
    txn: list[Any] = [("MULTI",)]
    acking: list[PartitionState] = []
    for st in parts:
        ids = acks.get(st.tp)
        if ids:
            txn.append(("XACK", st.stream, group, *ids))
            acking.append(st)
    by_count: dict[int, list[PartitionState]] = {}
    for st, n in zip(parts, read_counts(a, parts, count), strict=True):
        by_count.setdefault(n, []).append(st)
    reads = list(by_count.items())
    for group_parts, n in ((ps, n) for n, ps in reads):
        streams = [st.stream for st in group_parts]
        txn.append(same(("XREADGROUP", "GROUP", group, STREAM_CONSUMER, "COUNT", n,
                         "STREAMS", *streams, *(">" for _ in group_parts))))  # fmt: skip
    txn.append(("EXEC",))
    watch = list(a.parts.values())
    reading = [(ps, n) for n, ps in reads]
    check = [same(c) for c in fast_check(watch, group, asks)]
    return FastPlan(parts, acking, txn, reading, watch, check, [wait] if wait else [])


def lost_error(st: PartitionState, what: str) -> StateLostError:
    return StateLostError(
        f"the {what} of {st.topic}/{st.partition} vanished under this consumer (server "
        "restarted without persistence, or a key was deleted or evicted); partstream will "
        "not re-create it silently: decide where the group resumes with "
        "`partstream group seek ... --execute`"
    )
