"""The consumer's data path: fenced reads, acks and waits over the partitions it owns.

Every call goes through ``consume.lua`` in the partition's own slot, which compares the
partition's fence with this owner's grant before it reads or acks anything: a member whose
grant was superseded can neither receive entries nor ack them. All owned partitions are read
in one pipelined round trip (one per node in a cluster), and the previous batch's acks ride
along in the same calls.

When a fetch comes back empty, the consumer blocks on ``XREAD BLOCK`` over the owned
streams from the ids the fetch saw last (explicit ids: no lost wake-up), for at most
``block_ms``, well below the socket timeout. On a cluster, where a multi-key read must stay
in one slot, :meth:`Fetcher.poll_wait` polls each node instead. Heartbeats run on another
thread.

On a cluster, a call whose partition's slot is being migrated (``TRYAGAIN``, or redirections
beyond a few quick attempts) did not run: that partition is skipped for this fetch, its acks
are kept and sent with a later call, and no record is lost or reordered.

Not thread-safe: used by one consumer on its own thread.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions as rex

from partitions._base.durability import NONE, Durability
from partitions._base.errors import (
    ConnectionFailedError,
    NotEnoughReplicasError,
    NotOwnerError,
    StateLostError,
    translate,
)
from partitions._base.fence import fence_value
from partitions._base.functions import function_name, is_missing
from partitions._base.records import Record
from partitions._base.replies import (
    FetchResult,
    ack_result,
    fetch_result,
    hand_result,
    records_from_read,
    retry_result,
    seek_result,
)
from partitions._base.types import TopicPartition
from partitions._client.connection import Connection
from partitions._client.nodes import is_redirect, node_for_key, pipeline_per_node, redirect
from partitions._telemetry.metrics import ConsumerMetrics

# The stream-level consumer name every owner of a partition uses: the group's pending list
# of a partition is then simply "what the group has not acked", whoever read it, and a new
# owner recovers it in id order.
STREAM_CONSUMER = "partstream"
_CONSUME = function_name("consume")
_SEEK = function_name("seek")


class PartitionState:
    """What the consumer tracks for one owned partition."""

    __slots__ = (
        "args", "cursor", "fence", "fence_bytes", "keys", "last_id", "next_reclaim", "partition",
        "retention", "tail", "topic", "tp",
    )  # fmt: skip

    def __init__(
        self, conn: Connection, group: str, tp: TopicPartition, member_id: str, token: int
    ) -> None:
        k = conn.keys
        self.tp = tp
        self.topic, self.partition = tp.topic, tp.partition
        self.keys = [
            k.stream(tp.topic, tp.partition),
            k.fence(tp.topic, tp.partition),
            k.stream_groups(tp.topic, tp.partition),
            k.dlq(tp.topic, tp.partition),
        ]
        self.fence = fence_value(member_id, token)
        self.fence_bytes = self.fence.encode()
        # Common ARGV after the op: group, fence value, topic, partition, consumer.
        self.args = [group, self.fence, tp.topic, str(tp.partition), STREAM_CONSUMER]
        # '-': first redeliver every entry the previous owner left unacked (takeover).
        self.cursor = "-"
        self.tail = ""  # last entry id seen by an empty fetch: where a blocking wait starts
        self.last_id: str | None = None  # last record handed out
        self.next_reclaim = 0.0
        # "<max length> <retention ms>" of a safe-retention topic: its reclaim-time reads
        # compute where producers may trim ("~cut"); '' = plain retention, nothing to compute.
        self.retention = ""


class Fetcher:
    """Pipelined fenced reads and acks for one consumer. One thread only."""

    def __init__(
        self,
        conn: Connection,
        *,
        fetch_count: int,
        start: str,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.conn = conn
        self.metrics = metrics  # acked, refused and dead-lettered counts, per call
        self.client = conn.client
        self.fetch_count = fetch_count
        self.start = start  # '0' or '$': where a group starts on a partition it never read
        self.refused_acks = 0  # acks the fence refused (we had lost the partition)
        self.dead_lettered = 0
        self.reclaimed = 0  # entries delivered again by reclaim passes (periodic or asked)
        # Acks whose call failed with the outcome unknown: sent again (XACK is idempotent)
        # with the next read of their partition, so they do not sit pending until reclaimed.
        self._unsent_acks: dict[TopicPartition, list[str]] = {}
        self._conn: Any = None  # a dedicated connection for WATCH/MULTI (fast path)
        # The group's durability: commits (ack), seeks and dead letters wait for it; acks
        # riding on reads (auto-commit) do not, like Kafka's asynchronous auto-commit.
        self.durability: Durability = NONE
        self.wait_ms = 5000

    # -- reads ----------------------------------------------------------------------------
    def fetch(
        self,
        parts: list[PartitionState],
        acks: dict[TopicPartition, list[str]],
        max_deliveries: int,
        reclaim_ms: int,
    ) -> tuple[list[Record], list[tuple[PartitionState, FetchResult]]]:
        """Read every partition in ``parts`` (acking ``acks`` first) in one round trip.

        Returns the records, recovered ones first per partition, and the partitions the
        fence refused (not owner). Raises StateLostError if a stream or group vanished.
        """
        if self._unsent_acks:
            for st in parts:
                ids = self._unsent_acks.get(st.tp)
                if ids:
                    acks.setdefault(st.tp, [])[:0] = ids
            self._unsent_acks.clear()
        try:
            return self._fetch(parts, acks, max_deliveries, reclaim_ms)
        except ConnectionFailedError:
            # The read may have run without its reply reaching us (connection lost, server
            # killed after appending it to its AOF): its entries are then pending for the
            # group but were never handed out, and reading '>' would skip them for good.
            # Recover first, in id order, what is pending after the last record handed out.
            for st in parts:
                st.cursor = st.last_id or "-"
            raise

    def _fetch(
        self,
        parts: list[PartitionState],
        acks: dict[TopicPartition, list[str]],
        max_deliveries: int,
        reclaim_ms: int,
    ) -> tuple[list[Record], list[tuple[PartitionState, FetchResult]]]:
        now = time.monotonic()
        if self._fast_ok(parts, reclaim_ms, now):
            fast = self._fast_fetch(parts, acks)
            if fast:
                return fast, []
            # Nothing new (or the fast path stepped aside): the script path below also
            # answers each partition's tail, which a blocking wait needs.
        calls: list[tuple[PartitionState, list[Any]]] = []
        for st in parts:
            ids = acks.get(st.tp) or []  # dropped only once the call succeeded
            reclaim = 0
            if reclaim_ms and now >= st.next_reclaim:
                reclaim = reclaim_ms
                st.next_reclaim = now + min(reclaim_ms / 4000, 5.0)
            args = ["read", *st.args, self.fetch_count, st.cursor, max_deliveries, reclaim]
            calls.append((st, [*args, self.start, st.retention, len(ids), *ids]))
        replies = self._run(calls, _CONSUME, "consume", "reading partitions")
        records: list[Record] = []
        refused: list[tuple[PartitionState, FetchResult]] = []
        for (st, call), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                continue  # its slot is moving: nothing ran; read and ack it next time
            acks.pop(st.tp, None)
            res = fetch_result(st.topic, st.partition, reply)
            if res.status != 1:
                self._refuse(st, res, int(call[12]), refused)
                continue
            st.cursor = res.cursor
            st.tail = res.tail
            self.dead_lettered += res.dead
            if self.metrics is not None:
                self.metrics.acked(st.topic, res.acked)
                self.metrics.dead_lettered(st.topic, res.dead)
            self.reclaimed += res.reclaimed
            if res.records:
                records += res.records
        return records, refused

    def poll_wait(
        self, waiting: dict[str, str], block_ms: int, interrupted: Callable[[], bool]
    ) -> None:
        """Cluster: wait up to ``block_ms`` until a stream in ``waiting`` (stream -> tail id)
        has an entry after its tail, or ``interrupted()``.

        A blocking read over several streams exists only for keys of one slot, and every
        partition has its own slot: so each node's streams are polled (one pipeline per node
        of single-key XREADs, no BLOCK) every 2 ms at first, backing off to 25 ms while idle.
        New data is seen within that interval."""
        deadline = time.monotonic() + block_ms / 1000
        commands = [
            (key, (b"XREAD", "COUNT", 1, "STREAMS", key, tail)) for key, tail in waiting.items()
        ]
        pause = 0.002
        while True:
            replies = pipeline_per_node(self.conn, commands, attempts=1)
            if any(r is not None for r in replies):
                return  # data, or a slot moved: the next fetch finds out
            remaining = deadline - time.monotonic()
            if remaining <= 0 or interrupted():
                return
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.025)

    # -- the fast path ------------------------------------------------------------------------
    # Steady state (no takeover recovery, no reclaim due, single node): WATCH the fences,
    # check them, then MULTI / XACK ... / one XREADGROUP over all streams / EXEC. If a fence
    # changes before EXEC the transaction does not run at all, so this is exactly as fenced
    # as consume.lua, without the cost of copying every entry through Lua.
    def _fast_ok(self, parts: list[PartitionState], reclaim_ms: int, now: float) -> bool:
        if self.conn.is_cluster or not parts:
            return False
        return all(not st.cursor and not (reclaim_ms and now >= st.next_reclaim) for st in parts)

    def _fast_fetch(
        self, parts: list[PartitionState], acks: dict[TopicPartition, list[str]]
    ) -> list[Record] | None:
        # Tens of thousands of short-lived, acyclic objects per fetch: pausing the cyclic GC
        # while they are built saves it from rescanning them over and over (~2x here).
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._fast_fetch_inner(parts, acks)
        finally:
            if paused:
                gc.enable()

    def _fast_fetch_inner(
        self, parts: list[PartitionState], acks: dict[TopicPartition, list[str]]
    ) -> list[Record] | None:
        c = self._txn_conn()
        group = parts[0].args[0]
        try:
            check: list[tuple[Any, ...]] = [("WATCH", *[st.keys[1] for st in parts])]
            check += [("HGET", st.keys[1], group) for st in parts]
            # An admin's "reclaim stuck entries now" request: consume.lua serves it.
            check += [("HGET", st.keys[2], f"{group}:reclaim") for st in parts]
            c.send_packed_command(c.pack_commands(check))
            answers = [c.read_response() for _ in check]
            held, asked = answers[1 : len(parts) + 1], answers[len(parts) + 1 :]
            if any(asked) or any(h != st.fence_bytes for h, st in zip(held, parts, strict=True)):
                c.send_command("UNWATCH")
                c.read_response()
                return None  # a fence moved (the script path reports who holds it) or asked
            txn: list[tuple[Any, ...]] = [("MULTI",)]
            acking: list[PartitionState] = []
            for st in parts:
                ids = acks.get(st.tp)
                if ids:
                    txn.append(("XACK", st.keys[0], group, *ids))
                    acking.append(st)
            streams = [st.keys[0] for st in parts]
            txn.append(("XREADGROUP", "GROUP", group, STREAM_CONSUMER, "COUNT", self.fetch_count,
                        "STREAMS", *streams, *(">" for _ in parts)))  # fmt: skip
            txn.append(("EXEC",))
            c.send_packed_command(c.pack_commands(txn))
            out = [c.read_response() for _ in txn][-1]
        except rex.ResponseError:
            self._drop_conn()
            return None
        except rex.RedisError as err:
            self._drop_conn()
            raise translate(err, "reading partitions") from err
        if out is None or any(isinstance(r, Exception) for r in out):
            return None  # a fence changed meanwhile, or a group is missing: script path
        for st in parts:
            acks.pop(st.tp, None)
        if self.metrics is not None:
            for st, acked in zip(acking, out, strict=False):  # XACK replies, then the read
                self.metrics.acked(st.topic, int(acked))
        reply = out[-1]
        if not reply:
            return []
        by_stream = {st.keys[0].encode(): st for st in parts}
        records: list[Record] = []
        # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
        for name, entries in reply.items() if isinstance(reply, dict) else reply:
            st = by_stream[name]
            st.tail = ""
            records += records_from_read(st.topic, st.partition, entries)
        return records

    def _txn_conn(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self.client.connection_pool.get_connection()
            except rex.RedisError as err:
                raise translate(err, "connecting") from err
        return self._conn

    def _drop_conn(self) -> None:
        """Disconnect and give back the fetcher's connection after an error: the next one
        comes from the pool, which connects it where the primary is now (a connection
        reconnecting by itself would go back to its old address, after a failover too)."""
        c, self._conn = self._conn, None
        if c is not None:
            c.disconnect()
            self.client.connection_pool.release(c)

    def close(self) -> None:
        """Give back the transaction connection."""
        if self._conn is not None:
            self.client.connection_pool.release(self._conn)
            self._conn = None

    # -- acks, retries, dead letters --------------------------------------------------------
    def ack(
        self, parts: dict[TopicPartition, PartitionState], acks: dict[TopicPartition, list[str]]
    ) -> list[tuple[PartitionState, FetchResult]]:
        """Ack ids per partition in one round trip; returns the refused partitions."""
        calls = [(parts[tp], ["ack", *parts[tp].args, *ids]) for tp, ids in acks.items() if ids]
        acks.clear()
        refused: list[tuple[PartitionState, FetchResult]] = []
        if not calls:
            return refused
        try:
            replies = self._run(calls, _CONSUME, "consume", "committing", durable=True)
        except (ConnectionFailedError, NotEnoughReplicasError):
            # Unknown or unconfirmed: sent again (XACK is idempotent) with the next read.
            for st, call in calls:
                self._unsent_acks.setdefault(st.tp, []).extend(call[6:])
            raise
        for (st, call), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):  # its slot is moving: nothing ran
                self._unsent_acks.setdefault(st.tp, []).extend(call[6:])
                continue
            res = ack_result(reply)
            if res.status != 1:
                self._refuse(st, res, len(call) - 6, refused)
            elif self.metrics is not None:
                self.metrics.acked(st.topic, res.acked)
        return refused

    def hand(
        self,
        parts: dict[TopicPartition, PartitionState],
        claims: dict[TopicPartition, list[Record]],
        acks: dict[TopicPartition, list[str]],
    ) -> tuple[set[str], list[tuple[PartitionState, FetchResult]], set[TopicPartition]]:
        """Record on the server, in one round trip, that recovered records are handed out now
        (the partitions' pending acks ride along).

        Returns the ids no longer pending (trimmed: dead-lettered; not to hand out), the
        partitions the fence refused, and the partitions whose call did not run (a cluster
        slot mid-migration): hand out nothing more of those; their next read recovers
        everything after the last record handed out."""
        calls: list[tuple[PartitionState, list[Any]]] = []
        for tp, recs in claims.items():
            st = parts[tp]
            ids = acks.pop(tp, None) or []
            pairs = [x for r in recs for x in (r.id, r.deliveries)]
            calls.append((st, ["hand", *st.args, len(ids), *ids, *pairs]))
        try:
            replies = self._run(calls, _CONSUME, "consume", "handing out recovered records")
        except ConnectionFailedError:
            for st, call in calls:
                self._unsent_acks.setdefault(st.tp, []).extend(call[7 : 7 + int(call[6])])
            raise
        gone: set[str] = set()
        refused: list[tuple[PartitionState, FetchResult]] = []
        again: set[TopicPartition] = set()
        for (st, call), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):  # its slot is moving: nothing ran
                self._unsent_acks.setdefault(st.tp, []).extend(call[7 : 7 + int(call[6])])
                again.add(st.tp)
                st.cursor = st.last_id or "-"
                continue
            res = hand_result(reply)
            if res.status != 1:
                self._refuse(st, FetchResult(res.status, res.detail), int(call[6]), refused)
                continue
            if self.metrics is not None:
                self.metrics.acked(st.topic, res.acked)
            gone |= res.ids
        return gone, refused, again

    def retry(self, st: PartitionState, records: list[Record], max_deliveries: int) -> set[str]:
        """Keep handed-out records pending for another hand-out, or dead-letter those out of
        deliveries; returns the ids kept."""
        pairs = [x for r in records for x in (r.id, r.deliveries)]
        return self._one(st, ["retry", *st.args, max_deliveries, *pairs], "retrying")

    def dead_letter(
        self, st: PartitionState, records: list[Record], reason: str, *, handed: bool = True
    ) -> None:
        """Move pending records to the dead-letter stream with ``reason``, and ack them
        (``handed=False``: they were never handed out, so not counted as delivered)."""
        less = 0 if handed else 1
        pairs = [x for r in records for x in (r.id, r.deliveries - less)]
        self._one(st, ["dead", *st.args, reason, *pairs], "dead-lettering")

    def seek(self, st: PartitionState, new_id: str) -> str:
        """Fenced XGROUP SETID of the partition (pending entries are forgotten)."""
        call = (st, [st.args[0], st.fence, new_id, "0"])
        reply = self._run([call], _SEEK, "seek", "seeking", durable=True)[0]
        if isinstance(reply, Exception):
            raise translate(reply, f"seeking {st.topic}/{st.partition} (its slot is moving)")
        status, detail = seek_result(reply)
        if status != 1:
            if status == 0:
                raise NotOwnerError(f"cannot seek {st.topic}/{st.partition}: {detail} owns it")
            raise StateLostError(f"cannot seek {st.topic}/{st.partition}: the {detail} is gone")
        st.cursor, st.tail = "", ""
        return detail

    # -- plumbing ---------------------------------------------------------------------------
    def _one(self, st: PartitionState, args: list[Any], what: str) -> set[str]:
        reply = self._run([(st, args)], _CONSUME, "consume", what, durable=True)[0]
        if isinstance(reply, Exception):
            raise translate(reply, f"{what} {st.topic}/{st.partition} (its slot is moving)")
        res = retry_result(reply)
        if res.status == 0:
            raise NotOwnerError(f"{what} {st.topic}/{st.partition}: {res.detail} owns it now")
        if res.status == -1:
            raise _lost(st, res.detail)
        self.dead_lettered += res.dead
        if self.metrics is not None:
            self.metrics.dead_lettered(st.topic, res.dead)
        return res.ids

    def _refuse(
        self,
        st: PartitionState,
        res: FetchResult,
        n_acks: int,
        refused: list[tuple[PartitionState, FetchResult]],
    ) -> None:
        if res.status == -1:
            raise _lost(st, res.detail)
        self.refused_acks += n_acks
        if self.metrics is not None:
            self.metrics.refused(st.topic, n_acks)
        refused.append((st, res))

    def _run(
        self,
        calls: list[tuple[PartitionState, list[Any]]],
        fname: str,
        name: str,
        what: str,
        *,
        durable: bool = False,
    ) -> list[Any]:
        """FCALL each call in one pipeline (one per node on a cluster, where a call the
        cluster cannot serve right now, its slot mid-migration, gets its redirect error in
        place: it did not run). A server without the library gets it loaded, once.

        ``durable``: with the group's durability, the calls are followed on their connection
        by WAIT/WAITAOF; NotEnoughReplicasError (after they ran) if not confirmed in time.
        """
        waits = self.durability.commands(self.wait_ms) if durable else []
        commands = [
            (st.keys[0], ("FCALL", fname, len(_keys(st, name)), *_keys(st, name), *args))
            for st, args in calls
        ]
        replies: list[Any]
        if self.conn.is_cluster:
            if waits:
                return self._run_durable_on_nodes(commands, what, waits)
            replies = pipeline_per_node(self.conn, commands, on_missing=self._load_on)
            for reply in replies:
                if isinstance(reply, Exception) and not is_redirect(reply):
                    raise translate(reply, what) from reply
            return replies
        plain = [command for _, command in commands]
        replies = self._send(plain + waits, what)
        confirms = replies[len(plain) :]
        replies = replies[: len(plain)]
        again = [i for i, r in enumerate(replies) if isinstance(r, Exception) and is_missing(r)]
        if again:  # a server restarted empty, or a new primary without the library: nothing ran
            self.conn.functions.load()
            rerun = self._send([plain[i] for i in again] + waits, what)
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

    def _run_durable_on_nodes(
        self,
        commands: list[tuple[str, tuple[Any, ...]]],
        what: str,
        waits: list[tuple[Any, ...]],
    ) -> list[Any]:
        # WAIT counts what its own connection wrote: each node's calls and its WAIT in one
        # pipeline on that node. A redirection stays in place (it did not run), as above.
        by_node: dict[int, tuple[Any, list[int]]] = {}
        for i, (key, _) in enumerate(commands):
            node = node_for_key(self.conn, key)
            by_node.setdefault(id(node), (node, []))[1].append(i)
        out: list[Any] = [None] * len(commands)
        for node, indexes in by_node.values():
            for attempt in (0, 1):
                pipe = node.pipeline(transaction=False)
                for i in indexes:
                    pipe.execute_command(*commands[i][1])
                for cmd in waits:
                    pipe.execute_command(*cmd)
                try:
                    replies = pipe.execute(raise_on_error=False)
                except rex.RedisError as err:
                    redirect(self.conn, err)  # a node died or failed over: refresh the map
                    raise translate(err, what) from err
                mine, confirms = replies[: len(indexes)], replies[len(indexes) :]
                if attempt == 0 and any(isinstance(r, Exception) and is_missing(r) for r in mine):
                    self._load_on(node)
                    continue
                break
            for i, reply in zip(indexes, mine, strict=True):
                if isinstance(reply, Exception):
                    if not is_redirect(reply):
                        raise translate(reply, what) from reply
                    redirect(self.conn, reply)  # not run: the next call goes where it moved
                out[i] = reply
            if any(not isinstance(r, Exception) for r in mine):
                self.durability.check(confirms, what)
        return out

    def _send(self, commands: list[tuple[Any, ...]], what: str) -> list[Any]:
        """Send ``commands`` in one write on the fetcher's own connection and read a reply
        (or the server's error) per command. Sent once: a call whose reply was lost is never
        re-sent behind our back (a read that ran would be skipped by the next '>' read); the
        caller recovers from ConnectionFailedError instead."""
        c = self._txn_conn()
        replies: list[Any] = []
        try:
            c.send_packed_command(c.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(c.read_response())
                except rex.ResponseError as err:
                    replies.append(err)
        except rex.RedisError as err:
            self._drop_conn()
            raise translate(err, what) from err
        except OSError as err:
            self._drop_conn()
            raise ConnectionFailedError(f"{what}: connection lost ({err})") from err
        return replies

    def _load_on(self, node: Any) -> None:
        self.conn.functions.load(node)


def _keys(st: PartitionState, name: str) -> list[str]:
    return st.keys if name == "consume" else st.keys[:3]


def _lost(st: PartitionState, what: str) -> StateLostError:
    return StateLostError(
        f"the {what} of {st.topic}/{st.partition} vanished under this consumer (server "
        "restarted without persistence, or a key was deleted or evicted); partstream will "
        "not re-create it silently: decide where the group resumes with "
        "`partstream group seek ... --execute`"
    )
