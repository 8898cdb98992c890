"""What a consumer does, written once: generator steps that yield I/O requests to a shell.

Every decision of reading, handing out, committing and rebalancing lives in
:class:`ConsumerFlow`, over an :class:`~partitions._consumer.assignment.Assignment` and the
plans of :mod:`partitions._consumer.plans`. Where a step needs the server, a pause or a user
callback it ``yield``s one request (:mod:`partitions._consumer.ops`) and gets its answer
back, or its error thrown in. The threaded ``Consumer`` answers with blocking calls, the
``AsyncConsumer`` with awaits; neither decides anything itself.

A request whose outcome is unknown (a lost connection, or an asyncio cancellation) is handled
one way: what was fetched and not handed out is forgotten (it stays pending for the group)
and each partition is read again after the last record handed out, so nothing is lost and
nothing buffered is counted as a delivery; a hand-out it may have recorded on the server is
taken back by that read (:attr:`Assignment.unhanded`), since none was made.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from partitions._base.durability import NONE, Durability
from partitions._base.errors import (
    ConnectionFailedError,
    NotEnoughReplicasError,
    NotOwnerError,
    PartstreamError,
    translate,
)
from partitions._base.functions import is_missing
from partitions._base.records import Record
from partitions._base.serde import Decoder
from partitions._base.settings import GroupSettings
from partitions._base.types import Grant, TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._consumer import ops, plans
from partitions._consumer.assignment import Assignment, PartitionState
from partitions._consumer.calls import (
    ScriptCall,
    check_reason,
    dead_call,
    release_call,
    retry_call,
    seek_call,
)
from partitions._consumer.ops import (
    OUTCOME_UNKNOWN,
    RECONNECT_PAUSE_S,
    Callback,
    Events,
    Exchange,
    LoadFunctions,
    OnNodes,
    ReadTopics,
    Reset,
    Runner,
    Sleep,
    Step,
    Wait,
    safe_retention,
)

log = logging.getLogger("partstream.consumer")

# While some partitions hold buffered records, caught-up partitions that ran dry are read
# again at most this often: often enough that their fresh records do not wait for the
# others' backlog, rarely enough that iterating record by record does not cost a round
# trip per record.
REFILL_AFTER_S = 0.005


def current_settings(member: Any) -> GroupSettings:
    """The group's settings as stored (once a heartbeat told them), else this member's."""
    last = member.last
    settings: GroupSettings = last.settings if last is not None else member.settings
    return settings


class ConsumerFlow:
    """The consumer's logic over its :class:`Assignment`; see the module docstring."""

    def __init__(
        self,
        assignment: Assignment,
        config: ConsumerConfig,
        *,
        topics: dict[str, Any],
        runner: Runner,
        settings: Callable[[], GroupSettings],
        events: Events,
        listener: Any,
        is_cluster: bool,
        metrics: Any = None,
        update_topics: Callable[[dict[str, int]], None] = lambda counts: None,
        decoder: Decoder | None = None,
    ) -> None:
        self.a = assignment
        self.config = config
        self.runner = runner
        self.settings = settings
        self.events = events
        self.listener = listener
        self.is_cluster = is_cluster
        self.metrics = metrics
        self.decoder = decoder  # None: values stay bytes, nothing runs per record
        self.tally = plans.Tally(metrics)
        self.update_topics = update_topics
        self.topics = tuple(topics)
        self.counts = {name: m.partitions for name, m in topics.items()}
        self.retention = {name: safe_retention(m.spec) for name, m in topics.items()}
        self.meta_at = time.monotonic() + ops.METADATA_MAX_AGE_S
        self.start = "0" if config.auto_offset_reset == "earliest" else "$"
        # The group's durability: commits (ack), seeks and dead letters wait for it; acks
        # riding on reads (auto-commit) do not, like Kafka's asynchronous auto-commit.
        self.durability: Durability = NONE
        self.wait_ms = 5000
        self._durable_for: GroupSettings | None = None
        self._check_at = 0.0
        self._warned_at = 0.0
        # The last connection failure poll() rode out (None: none yet), for diagnostics.
        self.last_error: ConnectionFailedError | None = None
        self.member_id = assignment.member_id
        # Monotonic time the last fetch's reply came: its empty partitions were read then, so
        # a refill of them waits REFILL_AFTER_S from there (from its start, a fetch slower
        # than that -- a takeover's slice of backlog on a busy machine -- would at once be
        # followed by another round trip before its records went out).
        self._fetched_at = 0.0
        # The partitions whose fences the data connection watches, checked ours after the
        # WATCH (the fast path's check, riding behind each transaction): a transaction over
        # them needs no check of its own first. None: nothing is watched (or not known).
        self._watched: set[PartitionState] | None = None
        # A blocking wait ran since the last fetch: an empty fast read after it may mean the
        # tails it waited from are stale (its streams had entries the group delivered
        # already), and the script path reads them afresh.
        self._waited = False
        self._packed = plans.PackCache()  # the fast path's repeated commands, packed once
        self._woke = False  # the last fast fetch's blocking read returned an entry
        # When the fast path's trailing check next reads the reclaim requests (ASKS_EVERY_S).
        self._asks_at = 0.0

    # -- requests -----------------------------------------------------------------------------
    def enter(self) -> Step:
        """Before each request: re-read topics when due, follow the group's settings."""
        if time.monotonic() >= self.meta_at:
            yield from self.refresh_topics()
        settings = self.settings()
        if settings is not self._durable_for:  # the group's stored settings, once known
            self._durable_for = settings
            self.durability = settings.durability
            self.wait_ms = max(100, min(5000, settings.session_timeout_ms // 3))

    def refresh_topics(self) -> Step:
        """Re-read partition counts; a grown topic joins the group's assignment (the member
        sends the new counts with its next heartbeat, which the runner sends at once)."""
        self.meta_at = time.monotonic() + ops.METADATA_MAX_AGE_S
        metas = yield ReadTopics(self.topics)
        self.a.layouts.update(m.layout for m in metas.values())
        counts = {name: m.partitions for name, m in metas.items()}
        self.retention = {name: safe_retention(m.spec) for name, m in metas.items()}
        self.a.set_retention(self.retention)
        if counts != self.counts:
            log.info("topic partitions changed %s -> %s", self.counts, counts)
            self.counts = counts
            self.update_topics(counts)
            self.runner.wake()

    def poll(self, max_records: int | None, timeout: float) -> Step:
        """poll(): with auto-commit, the previous poll's records are acked first (riding on
        this poll's reads)."""
        yield from self.enter()
        if self.config.auto_commit and self.a.handed:
            self.a.confirm_handed()
        batch = yield from self.take(max_records or self.config.max_poll_records, timeout)
        if batch:
            self.a.note_poll(batch, self.config.auto_commit)
        return batch

    def next_one(self) -> Step:
        """One step of iteration: the next record (or none within ``block_ms``)."""
        yield from self.enter()
        batch = yield from self.take(1, self.config.block_ms / 1000)
        if batch:
            self.a.current = batch[0]
        return batch[0] if batch else None

    def done_one(self, record: Record) -> None:
        """The loop asked for the next record: with auto-commit ``record`` is processed."""
        if self.a.current is record and self.config.auto_commit:
            self.a.confirm((record,))
        self.a.current = None

    def take(self, n: int, timeout: float) -> Step:
        deadline = time.monotonic() + timeout
        a = self.a
        while True:
            try:
                yield from self.sync()
                if a.buffered() and self.alive():
                    if time.monotonic() - self._fetched_at >= REFILL_AFTER_S and a.refill_due():
                        # Caught-up partitions that ran dry are read again before more of
                        # the others' backlog goes out.
                        yield from self.fill(tails=False)
                    out = a.take(n)
                    if any(r._claim for r in out):
                        out = yield from self.record_handout(out)
                        if not out:
                            continue
                    a.handed_out(out)
                    if self.metrics is not None:
                        self.metrics.consumed(out)
                    return out
                if self.alive() and a.parts:
                    yield from self.fill()
                    if a.buffered():
                        continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                yield from self.idle(remaining)
            except ConnectionFailedError as err:
                # The server went away (restart, failover, network): ride it out within
                # this poll's timeout, as a Kafka consumer does; the heartbeat thread
                # decides whether the session survives it.
                self.lost_connection(err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                yield Sleep(min(remaining, RECONNECT_PAUSE_S))
            except asyncio.CancelledError:
                # Cancelled (asyncio) mid-request: the same recovery, then stop.
                self.a.recover_from_handed()
                raise

    def lost_connection(self, err: ConnectionFailedError) -> None:
        """After a failed read, hand-out or wait: forget what was fetched but not handed out
        (it stays pending for the group) and recover each partition, in id order, from the
        last record handed out; the next call reconnects (to the new primary, after a
        failover)."""
        self.last_error = err
        now = time.monotonic()
        if now >= self._warned_at:
            self._warned_at = now + 5.0
            log.warning("consumer %s: %s; retrying", self.member_id, err)
        self.a.recover_from_handed()

    def alive(self) -> bool:
        """False while the session may have expired (a paused process): hand out nothing."""
        now = time.monotonic()
        if now < self._check_at:
            return True
        margin = self.settings().session_timeout_ms / 10000
        if not self.runner.session_alive(margin=margin):
            return False
        self._check_at = now + min(0.05, margin)
        return True

    # -- reads ----------------------------------------------------------------------------------
    def fill(self, *, tails: bool = True, wait: tuple[Any, ...] | None = None) -> Step:
        """Read the partitions whose buffer ran dry into their buffers. ``tails=False``: other
        partitions hold records, so no blocking wait follows and their tails are not needed.
        ``wait``: a blocking read in front of the fast fetch (:meth:`idle`)."""
        s, m = self.settings(), self.metrics
        started = time.monotonic()
        try:
            records, refused = yield from self.fetch(
                s.max_deliveries, s.reclaim_idle_ms, tails, wait
            )
            self._fetched_at = time.monotonic()
        except OUTCOME_UNKNOWN:
            # The read may have run without its reply reaching us (connection lost, server
            # killed after appending it to its AOF): its entries are then pending for the
            # group but were never handed out, and reading '>' would skip them for good.
            # Recover first, in id order, what is pending after the last record handed out.
            self.a.recover_from_handed()
            raise
        if m is not None:
            m.fetched(time.monotonic() - started)
        for st, res in refused:
            log.info("%s/%s is %s's now: dropping it", st.topic, st.partition, res.detail)
            self.drop({st.tp})
        if self.config.foreign_entries == "dead_letter":
            records = yield from self.dead_letter_foreign(records)
        if self.decoder is not None and records:
            records = yield from self.dead_letter_undecodable(records)
        self.a.fill(records)

    def fetch(
        self, max_deliveries: int, reclaim_ms: int, tails: bool = True,
        wait: tuple[Any, ...] | None = None,
    ) -> Step:  # fmt: skip
        """Read every dry partition (its acks riding along) in one round trip; ``wait``: a
        blocking read first, in the same round trip (the caller checked wait_fetch_ok)."""
        now = time.monotonic()
        parts = self.a.reading()
        waited, self._waited = self._waited, False
        # A reclaim pass due in a steady single-node state goes first, on its own: folded
        # into the script path's read it would take every dry partition's new entries through
        # Lua (about twice the server's cost of the native read), every few seconds.
        # Hand-outs of a lost hand call to take back: the script path's read carries them
        # (after a seek a partition could otherwise be steady, its entries judged unfixed).
        scripted = self.is_cluster or bool(self.a.unhanded)
        steady = wait is None and not scripted and plans.fast_ok(parts, 0, now)
        if steady and (due := plans.reclaim_due(parts, reclaim_ms, now)):
            got = yield from self.reclaim(due, max_deliveries, reclaim_ms, now)
            if got[0] or got[1]:
                self._waited = waited  # no read yet: the next fetch's to know
                return got
        if wait is not None or (not scripted and plans.fast_ok(parts, reclaim_ms, now)):
            fast = yield from self.fast_fetch(parts, wait)
            if wait is not None and fast is not None and not fast:
                # Woken by an entry that the read did not find (the group had it delivered
                # already: a tail is stale): the next fetch reads the tails afresh.
                self._waited = self._woke
                return fast, []
            if fast is not None and (fast or not tails or (not waited and known_tails(parts))):
                return fast, []
            # Nothing new (or the fast path stepped aside) and a tail to learn: the script
            # path below also answers each partition's tail, which a blocking wait needs.
        plan = plans.plan_fetch(
            self.a, now, count=self.config.fetch_count, start=self.start,
            max_deliveries=max_deliveries, reclaim_ms=reclaim_ms,
        )  # fmt: skip
        replies = yield from self.run(plan.calls, "reading partitions")
        return plan.settle(self.a, replies, self.tally)

    def reclaim(
        self, due: list[PartitionState], max_deliveries: int, reclaim_ms: int, now: float
    ) -> Step:
        """The periodic reclaim pass of ``due`` (single node): their stuck entries, if any.
        Its calls leave the fences alone, so what the data connection watches stays watched."""
        plan = plans.plan_reclaim(due, now, count=self.config.fetch_count,
                                  max_deliveries=max_deliveries, reclaim_ms=reclaim_ms)  # fmt: skip
        replies = yield from self.run(plan.calls, "reclaiming stuck entries")
        return plan.settle(replies, self.tally)

    def fast_fetch(self, parts: list[PartitionState], wait: tuple[Any, ...] | None = None) -> Step:
        """The fast path's fetch: one transaction, the next one's WATCH and check behind it;
        a check first only where the connection does not watch every partition read (the
        first fetch, after a refusal, on a new connection). None: take the script path.
        ``wait``: a blocking read in front (only where the watch covers ``parts``)."""
        watched = self._watched
        self._woke = False
        if wait is None and (watched is None or any(st not in watched for st in parts)):
            answers = yield from self.exchange(plans.fast_check(parts, self.a.group))
            if any(isinstance(r, Exception) for r in answers):
                yield from self.reset()
                return None
            if not plans.fast_checked(parts, answers):
                self._watched = None
                yield from self.exchange([("UNWATCH",)])
                return None  # a fence moved (the script path reports who holds it) or asked
        now = time.monotonic()
        asks = now >= self._asks_at
        if asks:
            self._asks_at = now + plans.ASKS_EVERY_S
        plan = plans.plan_fast(self.a, parts, self.config.fetch_count, self._packed, wait, asks)
        replies = yield from self.exchange(
            plan.commands(), bulk=True, same_connection=True, block_ms=wait[4] if wait else 0
        )
        if replies is None:  # not the connection that watched: nothing was sent
            self._watched = None
            return None
        woke, replies, check = plan.split(replies)
        self._woke = bool(woke and woke[0] and not isinstance(woke[0], Exception))
        self._watched = plans.fast_held(plan.watch, check)  # EXEC ended the previous WATCH
        if any(isinstance(r, Exception) for r in replies[:-1]):
            yield from self.reset()
            return None
        # Tens of thousands of short-lived, acyclic objects per fetch: pausing the cyclic GC
        # while they are built saves it from rescanning them over and over (~2x here).
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return plan.settle(self.a, replies, self.tally)
        finally:
            if paused:
                gc.enable()

    def record_handout(self, out: list[Record]) -> Step:
        """Before recovered records are handed out, record the hand-out on the server (so a
        record that crashes its consumer is counted every time, and one that only sat in a
        buffer never is); what is no longer pending (trimmed, dead-lettered) is skipped."""
        plan = plans.plan_hand(self.a, self.a.claims(out))
        try:
            replies = yield from self.run(plan.calls, "handing out recovered records")
        except OUTCOME_UNKNOWN:
            plan.unknown(self.a)
            raise
        res = plan.settle(self.a, replies, self.tally)
        for st, r in res.refused:
            log.info("%s/%s is %s's now: dropping it", st.topic, st.partition, r.detail)
        refused = {st.tp for st, _ in res.refused}
        if res.again:
            self.a.drop_buffered(res.again)
        self.drop(refused)
        return self.a.recorded(out, res.gone, refused | res.again)

    def dead_letter_foreign(self, records: list[Record]) -> Step:
        """ConsumerConfig(foreign_entries="dead_letter"): entries another client wrote go to
        the dead-letter stream as ``malformed`` instead of to the application."""
        foreign: dict[TopicPartition, list[Record]] = {}
        for r in records:
            if r.foreign:
                foreign.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        if not foreign:
            return records
        for tp, recs in foreign.items():
            call = dead_call(self.a.parts[tp], recs, "malformed", handed=False)
            yield from self.one(call, "dead-lettering")
        return [r for r in records if not r.foreign]

    def dead_letter_undecodable(self, records: list[Record]) -> Step:
        """With a serializer: load the fetched records; those that do not load go to the
        dead-letter stream as ``deserialization`` with the error, never to the application,
        and their partitions flow on. A partition whose dead letters did not go out (fenced
        by a new owner: dropped; slot moving: read again from the last hand-out) hands out
        none of this fetch, so its order holds."""
        assert self.decoder is not None
        failed = self.decoder(records)
        if not failed:
            return records
        by_tp: dict[TopicPartition, list[tuple[Record, str]]] = {}
        for r, text in failed:
            tp = TopicPartition(r.topic, r.partition)
            if tp in self.a.parts:  # else no longer ours: left pending for its owner
                by_tp.setdefault(tp, []).append((r, text))
        calls = [
            dead_call(self.a.parts[tp], [r for r, _ in fs], "deserialization", handed=False,
                      errors=[t for _, t in fs])
            for tp, fs in by_tp.items()
        ]  # fmt: skip
        log.warning("%d record(s) did not deserialize: dead-lettered", len(failed))
        replies = yield from self.run(calls, "dead-lettering", durable=True)
        skip = {id(r) for r, _ in failed}
        for call, reply in zip(calls, replies, strict=True):
            if not plans.ran(reply):
                call.st.recover_from_handed()
                skip |= {id(r) for r in records if r.partition == call.st.partition
                         and r.topic == call.st.topic}  # fmt: skip
                continue
            try:
                plans.settle_ids(call, reply, "dead-lettering", self.tally)
            except NotOwnerError as err:
                log.info("%s: dropping it", err)
                self.drop({call.st.tp})
                skip |= {id(r) for r in records if self.a.state_of(r) is None}
        return [r for r in records if id(r) not in skip]

    def idle(self, remaining: float) -> Step:
        s, a = self.settings(), self.a
        block_ms = int(min(remaining * 1000, self.config.block_ms, s.heartbeat_interval_ms))
        if not self.alive() or not a.parts:
            if self.events.pending():
                return
            yield Sleep(max(block_ms, 1) / 1000 if a.parts else min(block_ms, 20) / 1000)
            return
        if a.acks:  # do not sit on acks while idle
            yield from self.commit_acks()
        if self.events.pending():
            return
        waiting = a.waiting()
        if waiting and block_ms > 0:
            self._waited = True
            if self.wait_fetch_ok(waiting):
                # The wait and the read in one round trip: the server runs the fenced read as
                # soon as the blocking one returns.
                yield from self.fill(wait=plans.wait_read(waiting, block_ms))
            else:
                yield Wait(waiting, block_ms)

    def wait_fetch_ok(self, waiting: dict[str, str]) -> bool:
        """The blocking wait may ride in front of a fast fetch: a single node, every owned
        partition waited on (its tail known, nothing to recover), none due a reclaim, and
        the data connection watching every fence, checked ours."""
        if self.is_cluster or self._watched is None or self.a.unhanded:
            return False
        parts = self.a.reading()
        if len(parts) != len(self.a.parts) or not known_tails(parts):
            return False
        s = self.settings()
        if not plans.fast_ok(parts, s.reclaim_idle_ms, time.monotonic()):
            return False
        return all(st in self._watched and st.stream in waiting for st in parts)

    # -- commits, retries, dead letters, seeks ------------------------------------------------
    def commit(self, records: Iterable[Record] | None) -> Step:
        yield from self.enter()
        if records is None:
            self.a.confirm_all()
        else:
            self.a.confirm_some(list(records))
        refused = yield from self.commit_acks()
        if refused:
            raise NotOwnerError(
                f"commit refused for {', '.join(f'{t}/{p}' for t, p in refused)}: "
                "this member no longer owns them"
            )

    def commit_acks(self, only: set[TopicPartition] | None = None) -> Step:
        plan = plans.plan_ack(self.a, self.a.take_acks(only), only)
        if not plan.calls:
            return []
        try:
            replies = yield from self.run(plan.calls, "committing", durable=True)
        except (*OUTCOME_UNKNOWN, NotEnoughReplicasError):
            # Unknown or unconfirmed: sent again (XACK is idempotent) with the next read.
            plan.unknown(self.a)
            raise
        refused = plan.settle(self.a, replies, self.tally)
        for st, _ in refused:
            self.drop({st.tp})
        return [st.tp for st, _ in refused]

    def owned_state(self, record: Record) -> Any:
        st = self.a.state_of(record)
        if st is None:
            raise NotOwnerError(f"{record.topic}/{record.partition} is no longer assigned here")
        return st

    def nack(self, record: Record) -> Step:
        """Deliver ``record`` again next, or dead-letter it once out of deliveries."""
        yield from self.enter()
        st = self.owned_state(record)
        self.a.forget(record)
        call = retry_call(st, [record], self.settings().max_deliveries)
        kept = yield from self.one(call, "retrying")
        if kept:
            self.a.push_front(record.again())

    def dead_letter(self, record: Record, reason: str, error: str | None = None) -> Step:
        check_reason(reason)  # before the record is forgotten
        yield from self.enter()
        st = self.owned_state(record)
        self.a.forget(record)
        call = dead_call(st, [record], reason, handed=True, errors=[error])
        yield from self.one(call, "dead-lettering")

    def one(self, call: ScriptCall, what: str) -> Step:
        reply = (yield from self.run([call], what, durable=True))[0]
        if not plans.ran(reply):
            raise translate(
                reply, f"{what} {call.st.topic}/{call.st.partition} (its slot is moving)"
            )
        return plans.settle_ids(call, reply, what, self.tally)

    def seek(self, tp: TopicPartition, new_id: str) -> Step:
        yield from self.enter()
        yield from self.sync()
        st = self.a.parts.get(tp)
        if st is None:
            raise NotOwnerError(f"{tp.topic}/{tp.partition} is not assigned to this consumer")
        self.a.seek(tp)
        reply = (yield from self.run([seek_call(st, new_id)], "seeking", durable=True))[0]
        if not plans.ran(reply):
            raise translate(reply, f"seeking {st.topic}/{st.partition} (its slot is moving)")
        return plans.settle_seek(st, reply)

    def close(self) -> Step:
        """Commit what was processed (the runner then revokes and leaves)."""
        try:
            yield from self.sync()
            if self.config.auto_commit:
                self.a.confirm_handed()
            yield from self.commit_acks()
        except PartstreamError as err:
            log.warning("commit on close failed: %s", err)

    # -- rebalances -----------------------------------------------------------------------------
    def sync(self) -> Step:
        """Apply rebalance events posted by the heartbeat thread or task, in order."""
        while (event := self.events.pop()) is not None:
            kind, tps, done = event
            try:
                if kind == "revoke":
                    yield from self.revoke(tps)
                elif kind == "assign":
                    yield from self.assign(tps)
                else:
                    yield from self.lose(tps)
            finally:
                if done is not None:
                    done.set()

    def assign(self, grants: dict[TopicPartition, Grant]) -> Step:
        for tp, grant in grants.items():
            self.a.assign(tp, grant.token, self.retention.get(tp.topic, ""))
        if self.metrics is not None:
            self.metrics.rebalanced(assigned=grants)
        if self.listener is not None and grants:
            yield Callback(self.listener.on_partitions_assigned, set(grants))

    def revoke(self, revoked: set[TopicPartition]) -> Step:
        known = self.a.owned(revoked)
        if self.listener is not None and known:
            yield Callback(self.listener.on_partitions_revoked, set(known))
        if self.config.auto_commit:
            self.a.confirm_handed(known)
        try:
            yield from self.commit_acks(only=known)
        except PartstreamError as err:
            log.warning("commit on revoke failed: %s", err)
        # Every fence handed back in one round trip (the poll loop, and so the partitions
        # kept, waits for it); one refused by the commit was dropped already.
        calls = [release_call(self.a.parts[tp]) for tp in sorted(known) if tp in self.a.parts]
        if calls:
            try:
                yield from self.run(calls, "releasing revoked partitions", durable=True)
            except PartstreamError as err:
                log.warning("release of %d revoked partition(s) failed: %s", len(calls), err)
        self.drop(known)

    def lose(self, tps: set[TopicPartition]) -> Step:
        # Acks of records processed before the loss still go out, through the fence: if a
        # new owner holds it they are refused (and counted), else they record real work.
        if self.config.auto_commit:
            self.a.confirm_handed(tps)
        try:
            yield from self.commit_acks(only=self.a.owned(tps))
        except PartstreamError as err:
            log.info("acks of lost partitions not sent: %s", err)
        self.drop(tps)
        lost_cb = getattr(self.listener, "on_partitions_lost", None)
        if lost_cb is not None:
            yield Callback(lost_cb, set(tps))

    def drop(self, tps: set[TopicPartition]) -> None:
        """Stop reading ``tps``: revoked, lost, or found fenced by a newer owner."""
        owned = self.a.drop(tps)
        if self.metrics is not None:
            self.metrics.rebalanced(revoked=owned)

    # -- the wire -------------------------------------------------------------------------------
    def exchange(
        self, commands: list[Any], what: str = "reading partitions", *,
        bulk: bool = False, same_connection: bool = False, block_ms: int = 0,
    ) -> Step:  # fmt: skip
        """One :class:`Exchange`; if it fails, the shell dropped its connection, and the
        fences that connection watched are watched no more."""
        try:
            replies = yield Exchange(commands, what, bulk, same_connection, block_ms)
        except BaseException:
            self._watched = None
            raise
        return replies

    def reset(self) -> Step:
        """Drop the data connection (and with it what it watched)."""
        self._watched = None
        yield Reset()

    def run(self, calls: list[ScriptCall], what: str, *, durable: bool = False) -> Step:
        """FCALL each call in one round trip (one per node on a cluster, where a call the
        cluster cannot serve right now, its slot mid-migration, gets its redirect error in
        place: it did not run). A server without the library gets it loaded, once.

        ``durable``: with the group's durability, the calls are followed on their connection
        by WAIT/WAITAOF; NotEnoughReplicasError (after they ran) if not confirmed in time.
        """
        waits = self.durability.commands(self.wait_ms) if durable else []
        if self.is_cluster:
            commands = [(c.st.stream, c.command()) for c in calls]
            replies = yield OnNodes(commands, what, waits, self.durability)
            return replies
        plain = [c.command() for c in calls]
        replies = yield from self.exchange(plain + waits, what)
        confirms = replies[len(plain) :]
        replies = replies[: len(plain)]
        again = [i for i, r in enumerate(replies) if isinstance(r, Exception) and is_missing(r)]
        if again:  # a server restarted empty, or a new primary without the library: nothing ran
            yield LoadFunctions()
            rerun = yield from self.exchange([plain[i] for i in again] + waits, what)
            for i, reply in zip(again, rerun[: len(again)], strict=True):
                replies[i] = reply
            if waits:
                confirms = rerun[len(again) :]  # the later WAIT covers the earlier writes too
        for reply in replies:
            if isinstance(reply, Exception):
                raise translate(reply, what) from reply
        if waits:
            self.durability.check(confirms, what)
        return replies


def known_tails(parts: list[Any]) -> bool:
    """Every partition of ``parts`` knows where a blocking wait on it starts (its last read
    ended at the stream's end, or read entries up to a known id)."""
    return all(st.tail and st.tail != plans.RECOVERED for st in parts)
