"""The producer's sender: drains the accumulator per node and writes, for both shells.

One round, written once as a generator (:func:`send_round`), decides everything: which node
each batch goes to, the one write per node (the batches' ``FCALL`` s, then ``WAIT`` /
``WAITAOF`` for ``acks="all"``), what each reply means, what an error needs before the retry
(a function library to load, a cluster map to learn from) and which batches are retried. It
does no I/O: it yields an :class:`Exchange` or a :class:`React` and is sent the result. The
threaded :class:`Sender` drives it with blocking calls, the asyncio producer
(:mod:`partitions._producer.aio`) with awaits.

Two senders run per threaded producer: while one waits for the server to run its round, the
other packs and sends the next, so the server is not idle between rounds.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from partitions._base.functions import is_missing
from partitions._client.connection import Connection
from partitions._client.nodes import group_by_node, node_for_key, redirect, retriable
from partitions._client.wire import (
    ASKING,
    CONNECTION_ERRORS,
    Replies,
    exchange,
    exchange_on,
    is_connected,
    pack,
)
from partitions._producer.accumulator import Accumulator, Completion, complete
from partitions._producer.batch import (
    MULTI_MIN_RECORDS,
    Batch,
    multi_groups,
    multi_replies,
    packed_multi,
)
from partitions._producer.delivery import wait_commands

__all__ = ["SENDERS", "Driver", "Exchange", "React", "Sender", "reaction", "send_round"]

log = logging.getLogger("partstream.producer")

SENDERS = 2


@dataclass(slots=True)
class Exchange:
    """Write ``payload`` on a connection of ``target`` and read ``expect`` replies."""

    target: Any
    payload: list[bytes]
    expect: int


@dataclass(slots=True)
class React:
    """Before ``batch`` is judged: ``"reload"`` the function library (the server lacks it),
    or ``"redirect"`` (learn from a cluster's answer; the result is the ASK target, or None)."""

    what: str
    batch: Batch
    err: Exception


Step = Exchange | React
Round = Generator[Step, Any, list[Completion]]


def reaction(err: Exception, cluster: bool, moving: bool) -> str | None:
    """What an error needs before its batch is sent again (``moving``: the one cluster
    policy, :func:`partitions._client.nodes.retriable`, says the map is stale)."""
    if is_missing(err):
        # A server without this version's functions (restarted empty, a new or promoted
        # primary, an upgrade): load them if this user may; nothing was executed.
        return "reload"
    if cluster and moving:
        # MOVED updates the slot map; ASK sends the next attempt to the importing node (with
        # ASKING); the rest refresh the map. A redirection executed nothing, so the sequence
        # number stays and the script drops a real duplicate.
        return "redirect"
    return None


def send_round(
    acc: Accumulator,
    guard: contextlib.AbstractContextManager[Any],
    batches: list[Batch],
    target_of: Callable[[bytes], Any],
    socket_timeout: float,
    moving: Callable[[Exception], bool],
) -> Round:
    """One round: one write per node, then settle, react, judge and put back. Returns the
    completions to resolve (unlocked) once the generator is done; ``guard`` is held around
    every change of the accumulator (a lock in the threaded shell)."""
    retry: list[Batch] = []
    done: list[Completion] = []
    cluster = acc.cluster
    try:
        groups = group_by_node(
            batches,
            lambda b: b.ask if b.ask is not None else target_of(b.route.stream_keys[b.partition]),
        )
        for target, group in groups:
            waits = wait_commands(acc.durability, group, socket_timeout)
            multi = target in acc.loaded and target in acc.permitted
            units = _units(group, multi, cluster)
            payload = [b"".join(unit.packed() for unit in units)]
            probe = target not in acc.permitted and target not in acc.refused
            if probe:
                payload.append(_probe(group[0].route.stream_keys[group[0].partition]))
            if waits:
                payload.append(b"".join(pack(w) for w in waits))
            for b in group:
                b.ask = None  # one attempt only: a later ASK says again
            started = time.monotonic()
            expect = sum(u.expect for u in units) + probe * PROBE_REPLIES + len(waits)
            out = yield Exchange(target, payload, expect)
            group, replies, probed, confirms = _split(out, units, probe, len(waits))
            unrecorded = [b for b, r in zip(group, replies, strict=True)
                          if isinstance(r, _Unrecorded)]  # fmt: skip
            with guard:
                if probe:
                    _note_probe(acc, target, probed)
                if _multi_refused(out, units):  # the user's rights changed since the probe
                    acc.permitted.discard(target)
                    acc.refused.add(target)
                _note_library(acc.loaded, target, replies)
                replies = [r.reply if isinstance(r, _Unrecorded) else r for r in replies]
                for b in unrecorded:
                    acc.unrecorded(b)
                settled, errors = acc.settle(group, replies, waits, confirms,
                                             time.monotonic() - started)  # fmt: skip
            complete(settled)
            if unrecorded:  # appended all the same; load the library for the next batches
                missing = rex.ResponseError("function not found inside EXEC (batch appended)")
                yield React("reload", unrecorded[0], missing)
            for batch, err in errors:
                what = reaction(err, cluster, moving(err))
                if what is not None:
                    ask = yield React(what, batch, err)
                    if what == "redirect":
                        batch.ask = ask
            with guard:
                again, failed = acc.judge(errors)
            complete(failed)
            retry += again
    except Exception as err:  # a dead sender would hang every flush()
        log.exception("producer sender failed a round")
        with guard:
            unsettled = [b for b in batches if b not in retry]
            again, failed = acc.judge(acc.broken_round(unsettled, err))
        complete(failed)
        retry += [b for b in again if b not in retry]
    with guard:
        done = acc.finish(batches, retry, [])
    return done


class _Unit:
    """Batches written as one: a single ``FCALL append``, or one ``MULTI`` of native XADDs
    and ``FCALL commit`` (after ``ASKING`` when the first batch was redirected)."""

    __slots__ = ("asking", "batches", "expect", "multi")

    def __init__(self, batches: list[Batch], multi: bool) -> None:
        self.batches = batches
        self.multi = multi
        self.asking = batches[0].ask is not None
        self.expect = (multi_replies(batches) if multi else 1) + self.asking

    def packed(self) -> bytes:
        if not self.multi:
            return self.batches[0].packed(False)
        body = packed_multi(self.batches)
        return ASKING + body if self.asking else body


def _units(group: list[Batch], multi: bool, cluster: bool) -> list[_Unit]:
    """How a node's batches go where ``multi`` (a call of the library succeeded since the
    last sign it may be gone, and the user may send MULTI batches): on a single server, all
    of them in MULTIs once one has several records (a batch in one costs the commit's few
    calls, not a call of its own), each MULTI of at most ``MULTI_MAX_RECORDS`` records
    (:func:`~partitions._producer.batch.multi_groups`); on a cluster one MULTI per batch of
    several records (a MULTI holds one slot). FCALL append for the others."""
    big = [multi and b.count >= MULTI_MIN_RECORDS for b in group]
    if cluster:
        return [_Unit([b], m) for b, m in zip(group, big, strict=True)]
    if any(big):
        return [_Unit(g, True) for g in multi_groups(group)]
    return [_Unit([b], False) for b in group]


def _split(
    out: list[Any], units: list[_Unit], probe: bool, waits: int
) -> tuple[list[Batch], list[Any], list[Any], list[Any]]:
    """One node's replies: (the batches, a reply for each in append.lua's terms, skipping
    ASKING's +OK and folding a MULTI's; the probe's replies; the WAITs' replies)."""
    batches: list[Batch] = []
    replies: list[Any] = []
    at = 0
    for unit in units:
        at += unit.asking
        count = unit.expect - unit.asking
        batches += unit.batches
        if unit.multi:
            replies += fold_multi(out[at : at + count], [b.count for b in unit.batches])
        else:
            replies.append(out[at])
        at += count
    probed = out[at : at + PROBE_REPLIES] if probe else []
    at += len(probed)
    return batches, replies, probed, out[at : at + waits]


def _multi_refused(out: list[Any], units: list[_Unit]) -> bool:
    """Whether the server refused a MULTI of this exchange for the user's rights."""
    at = 0
    for unit in units:
        at += unit.asking
        if unit.multi and isinstance(out[at], rex.NoPermissionError):
            return True
        at += unit.expect - unit.asking
    return False


# What a MULTI batch needs beyond XADD and the function: MULTI/EXEC, and inside commit
# XREVRANGE (the batch's last id), XTRIM (retention) and XDEL (undo). A least-privilege
# producer user (``partstream acl print --role producer``) has none of them and keeps
# FCALL append. Asked once per node, in a transaction that changes nothing; the answer
# comes before any MULTI batch is sent there.
PROBE_REPLIES = 5
_NO_TRIM = str(2**63 - 1)


def _probe(stream: bytes) -> bytes:
    return b"".join(
        [
            pack(["MULTI"]),
            pack(["XREVRANGE", stream, "+", "-", "COUNT", "1"]),
            pack(["XTRIM", stream, "MAXLEN", "~", _NO_TRIM]),
            pack(["XDEL", stream, "0-0"]),
            pack(["EXEC"]),
        ]
    )


def _note_probe(acc: Accumulator, target: Any, replies: list[Any]) -> None:
    """May batches go to ``target`` as MULTI (its user has the rights): yes, no (refused
    for the producer's life: ACLs rarely change), or not known yet (ask again)."""
    flat = [*replies[:-1], *(replies[-1] if isinstance(replies[-1], list) else [replies[-1]])]
    if any(isinstance(r, rex.NoPermissionError) or str(r).startswith("NOPERM") for r in flat
           if isinstance(r, Exception)):  # fmt: skip
        acc.refused.add(target)
        log.info("the producer's user may not use MULTI batches here: FCALL append only")
    elif isinstance(replies[-1], list) and not any(isinstance(r, Exception) for r in flat):
        acc.permitted.add(target)


class _Unrecorded:
    """A MULTI batch appended by its XADDs while ``commit`` was missing (``reply``: its ids)."""

    __slots__ = ("reply",)

    def __init__(self, reply: list[Any]) -> None:
        self.reply = reply


_CLEAN = frozenset({bytes, list})


def fold_multi(replies: list[Any], counts: list[int]) -> list[Any]:
    """The replies of ``MULTI, XADD x n1, ..., XADD x nk, FCALL commit, EXEC`` as one reply
    per batch, in ``append.lua``'s terms: ``[1, id1, ..., idn]``, the duplicate's
    ``[2, ...]``, or the error (nothing of that batch stays). A connection error stands for
    the unread replies: every batch is in doubt (EXEC may have run). ``_Unrecorded`` where
    the XADDs ran but the library was missing: appended, not recorded."""
    k = len(counts)
    if isinstance(replies[-1], CONNECTION_ERRORS):
        # (the wire fills every reply from the break to the exchange's end with the error,
        # so the last one tells)
        return [replies[-1]] * k
    queued, outcome = replies[1:-1], replies[-1]
    if isinstance(replies[0], Exception):
        # MULTI refused (e.g. an ACL without it): the commands after it ran one by one,
        # their replies are where QUEUED would be.
        outcome = queued
    elif isinstance(outcome, Exception):
        # EXECABORT: a command was refused while queued (OOM, MOVED/ASK, READONLY, ...), so
        # nothing ran; the first refusal says why.
        return [next((r for r in queued if isinstance(r, Exception)), outcome)] * k
    if not isinstance(outcome, list) or len(outcome) != sum(counts) + 1:
        unexpected = rex.ResponseError(f"unexpected reply to a producer batch's EXEC: {outcome!r}")
        return [unexpected] * k
    commits = outcome[-1]
    if isinstance(commits, Exception) or not isinstance(commits, list) or len(commits) != k:
        commits = [commits] * k  # the call itself failed (the library is missing)
    out: list[Any] = []
    at = 0
    # Every id an id (and the commits' list last): no per-record look for a failed XADD.
    clean = _CLEAN.issuperset(map(type, outcome))
    for count, commit in zip(counts, commits, strict=True):
        ids = outcome[at : at + count]
        at += count
        failed = None if clean else next((i for i in ids if isinstance(i, Exception)), None)
        if commit == 1 and failed is None:
            out.append([1, *ids])
        elif isinstance(commit, Exception) and is_missing(commit) and failed is None:
            out.append(_Unrecorded([1, *ids]))
        elif isinstance(commit, Exception | list):
            out.append(commit)  # an error, or a duplicate: this attempt's entries are undone
        else:
            out.append(failed or rex.ResponseError(f"unexpected commit reply {commit!r}"))
    return out


def _note_library(loaded: set[Any], target: Any, replies: list[Any]) -> None:
    """Where a call of the library succeeded, batches may go as MULTI; not after a sign it
    may be gone (it is missing, or the connection broke: the server may have restarted)."""
    gone = any(
        isinstance(r, (*CONNECTION_ERRORS, _Unrecorded))
        or (isinstance(r, Exception) and is_missing(r))
        for r in replies
    )
    if gone:
        loaded.discard(target)  # (permissions stay: a restart does not change them)
    elif any(isinstance(r, list) for r in replies):
        loaded.add(target)


class Driver:
    """Steps a round for a shell: ``next()`` gives the I/O to do (None once the round is
    over, its completions in ``result``), ``reply()`` hands back its answer or its error
    (an error goes into the round, which gives its batches to the retry policy)."""

    __slots__ = ("_answer", "_error", "_round", "result")

    def __init__(self, round_: Round) -> None:
        self._round = round_
        self._answer: Any = None
        self._error: BaseException | None = None
        self.result: list[Completion] = []

    def next(self) -> Step | None:
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._round.throw(error)
            return self._round.send(self._answer)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def reply(self, answer: Any = None, error: BaseException | None = None) -> None:
        self._answer, self._error = answer, error


class Sender:
    """The threaded shell's senders: daemon threads draining the accumulator under the lock
    of ``cond`` (where they announce progress: records resolved, room in the buffer) and of
    ``work`` (where they wait to be woken for batches)."""

    def __init__(
        self,
        acc: Accumulator,
        cond: threading.Condition,
        work: threading.Condition,
        conn: Connection,
    ) -> None:
        self._acc = acc
        self._cond = cond
        self._work = work
        self._conn = conn
        if conn.is_cluster:
            self._target: Callable[[bytes], Any] = lambda key: (
                node_for_key(conn, key).connection_pool
            )
        else:
            pool = conn.client.connection_pool
            self._target = lambda key: pool
        # The sockets a sender waits on for its round's replies (replies_in).
        self._reading: set[Any] = set()
        self.threads = [
            threading.Thread(target=self._run, name=f"partstream-producer-{i}", daemon=True)
            for i in range(SENDERS)
        ]
        for t in self.threads:
            t.start()

    def replies_in(self) -> bool:
        """Whether replies wait on a socket a sender reads its round from: that sender
        wants the GIL to take them (Producer._give_way). Any thread may ask."""
        socks = list(self._reading)
        if not socks:
            return False
        poll = select.poll()  # (not select(): it refuses descriptors from 1,024 on)
        try:
            for sock in socks:
                poll.register(sock, select.POLLIN)
            return any(ev & select.POLLIN for _, ev in poll.poll(0))
        except (OSError, ValueError):  # a socket closed meanwhile
            return False

    def join(self, timeout: float | None) -> None:
        for t in self.threads:
            t.join(timeout)

    def _take(self, wait: bool = True) -> tuple[list[Batch], list[Batch]] | None:
        """With the lock held: wait for a round, or for unsent batches that expired (None
        instead of waiting when not ``wait``)."""
        acc = self._acc
        while True:
            batches, expired, wake = acc.drain()
            if batches or expired:
                if batches and acc.ready:  # (a split round: the other sender takes the rest)
                    self._work.notify()
                return batches, expired
            if acc.closed and not acc.ready and not acc.open:
                return [], []
            if not wait:
                return None
            self._work.wait(None if wake is None else max(0.0, wake - acc.clock()))

    def _run(self) -> None:
        acc, cond = self._acc, self._cond
        held: dict[Any, Any] = {}  # pool -> the connection this sender keeps while busy
        try:
            self._loop(acc, cond, held)
        finally:
            self._release(held)

    def _loop(self, acc: Accumulator, cond: threading.Condition, held: dict[Any, Any]) -> None:
        progress = True
        while True:
            with cond:
                if progress:
                    # The previous round's records resolved: wake whoever waits for progress
                    # (not the other sender: this one drains again, taking what came
                    # meanwhile).
                    cond.notify_all()
                taken = self._take(wait=not held)
                if taken is not None:
                    batches, expired = taken
                    expiries = acc.expire(expired)
            if taken is None:
                # Idle: the connection goes back to the pool before the wait (it is kept
                # across back-to-back rounds only: the pool's get and release cost 10-30 us
                # of CPU a round, python -m bench.exchange_cpu; bench/README.md, issue 18).
                self._release(held)
                progress = False
                continue
            progress = True
            if not batches and not expired:
                return
            complete(expiries)
            with cond:
                acc.finish([], [], expired)
                cond.notify_all()
            if batches:
                timeout = self._conn.config.socket_timeout
                driver = Driver(send_round(acc, cond, batches, self._target, timeout, self._moving))
                while (step := driver.next()) is not None:
                    try:
                        driver.reply(self._io(step, held))
                    except Exception as err:
                        driver.reply(error=err)
                complete(driver.result)

    @staticmethod
    def _exchange_held(held: dict[Any, Any], step: Exchange, reading: set[Any]) -> list[Any]:
        """:func:`exchange` on the connection this sender keeps between back-to-back rounds
        (taken from the pool at the first, connected, so a refused connection is still "not
        sent"); a connection that broke, or an exchange that raised, goes back to the pool."""
        pool = step.target
        link = held.pop(pool, None)
        if link is not None and not is_connected(link):
            pool.release(link)
            link = None
        if link is None:
            try:
                link = pool.get_connection()
            except CONNECTION_ERRORS as err:
                return Replies.not_sent(err, step.expect)
        sock = getattr(link, "_sock", None)
        if sock is not None:
            reading.add(sock)
        try:
            out = exchange_on(link, step.payload, step.expect)
        except BaseException:
            link.disconnect()  # (replies may be left unread on it)
            pool.release(link)
            raise
        finally:
            reading.discard(sock)
        held[pool] = link
        return out

    @staticmethod
    def _release(held: dict[Any, Any]) -> None:
        while held:
            pool, link = held.popitem()
            pool.release(link)

    def _moving(self, err: Exception) -> bool:
        return retriable(self._conn, err)

    def _io(self, step: Step, held: dict[Any, Any]) -> Any:
        if isinstance(step, Exchange):
            if self._conn.is_cluster:  # (a map change replaces the pools: take one a round)
                return exchange(step.target, step.payload, step.expect)
            return self._exchange_held(held, step, self._reading)
        if step.what == "reload":
            self._reload()
            return None
        ask = redirect(self._conn, step.err)
        return None if ask is None else ask.connection_pool

    def _reload(self) -> None:
        conn = self._conn
        try:
            if conn.is_cluster:  # a node restarted, failed over or joined: every primary
                conn.client.nodes_manager.initialize()
                for node in conn.client.get_primaries():
                    conn.functions.load(conn.client.get_redis_connection(node))
            else:
                conn.functions.load()
        except Exception:  # not ours to load, or an outage: the next attempt backs off
            log.debug("loading the server-side functions failed", exc_info=True)
