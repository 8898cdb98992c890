"""A producer or consumer process for the fault tests (run as a script, not a test).

Workers use the library's defaults: ``ProducerConfig()``, ``ConsumerConfig(auto_commit=False)``
and ``GroupSettings()``. A flag overrides a setting only for a scenario about that setting,
which says so in its docstring (most often a short session, so that an eviction happens
within the test's time). ``auto_commit=False`` is the one fixed choice: the worker commits
each partition's records itself, so it can log every commit's outcome for the checker.

Every outcome is one JSON line, flushed at once, in the file named by ``--log`` (a kill -9
tears at most the last line, which the reader skips):

* producer: ``{"ev": "sent", "key", "seq", "ok": true, "p", "id"}`` when a send was
  acknowledged, ``"ok": false, "err": <type>`` when its future failed (outcome in doubt);
  with ``--log-issue`` also ``{"ev": "issue", "key", "seq"}`` just before each send;
* consumer: ``{"ev": "proc", "p", "id", "key", "seq", "member", "group", "token", "t0", "t1",
  "t"}`` for each record processed (``t0``/``t1``: when the poll that handed it out started
  and returned), then ``{"ev": "ack", "p", "ids", "group", "token", "outcome":
  ok|refused|unknown|dropped, "t"}`` for the commit of that partition's records (``t``: when
  the commit started), first with outcome ``unknown`` just before the commit, then with its
  real outcome; ``poison`` just before a ``--poison`` record kills its process;
  ``slow`` (``t0``, ``t1``) around a ``--slow-ms`` pause;
* both: ``ready`` (with ``lib``, the path the library was imported from), ``error`` (typed
  errors, e.g. StateLostError), ``bye``.

Times are ``time.time()`` of one machine. SIGTERM closes gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

import partitions
from partitions._base.errors import (
    ConnectionFailedError,
    NotOwnerError,
    PartstreamError,
    StateLostError,
)
from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._base.types import TopicPartition
from partitions._client.aio import connect_async
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.aio import AsyncConsumer
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer, RecordFuture

LIB = str(Path(partitions.__file__).resolve().parent)


class Log:
    """Thread-safe JSON-lines writer, one flush per line."""

    def __init__(self, path: str) -> None:
        self._fh: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - process lifetime
        self._lock = threading.Lock()

    def __call__(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, **fields}, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()


def client_config(args: argparse.Namespace) -> ClientConfig:
    extra = {} if args.socket_timeout is None else {"socket_timeout": args.socket_timeout}
    return ClientConfig(url=args.url, namespace=args.ns, **extra)


def producer_config(args: argparse.Namespace) -> ProducerConfig:
    """ProducerConfig() unless the scenario is about a producer setting."""
    changes = {
        name: getattr(args, name)
        for name in ("linger_ms", "batch_size", "retries", "acks")
        if getattr(args, name) is not None
    }
    return ProducerConfig().with_changes(**changes)


def acked_before(path: str) -> set[tuple[str, int]]:
    """The (key, seq) a previous producer's log shows acknowledged."""
    out = set()
    for line in Path(path).read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("ev") == "sent" and e.get("ok"):
            out.add((e["key"], e["seq"]))
    return out


def produce(args: argparse.Namespace, log: Log) -> int:
    conn = connect(client_config(args))
    log("ready", idmp=conn.server.has("idmp"), server=conn.server.describe(), lib=LIB,
        count=args.count)  # fmt: skip
    producer = Producer(conn, producer_config(args))
    stop = threading.Event()
    SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    seqs: dict[str, int] = defaultdict(int)
    skip = acked_before(args.resume_from) if args.resume_from else set()
    pad = "x" * args.value_bytes
    start = time.monotonic()

    def done(key: str, seq: int) -> Any:
        def cb(fut: RecordFuture) -> None:
            err = fut.exception(0)
            if err is None:
                md = fut.result(0)
                log("sent", key=key, seq=seq, ok=True, p=md.partition, id=md.id, t=time.time())
            else:
                log("sent", key=key, seq=seq, ok=False, err=type(err).__name__, msg=str(err)[:200])

        return cb

    sent = 0
    for i in range(args.count):
        if stop.is_set():
            break
        key = f"k{i % args.keys}"
        seqs[key] += 1
        seq = seqs[key]
        if (key, seq) in skip:
            continue  # a restarted producer resends only what it never saw acknowledged
        value = json.dumps({"key": key, "seq": seq, "pad": pad}).encode()
        if args.log_issue:
            log("issue", key=key, seq=seq)
        try:
            fut = producer.send(args.topic, value, key=key)
        except PartstreamError as err:
            log("sent", key=key, seq=seq, ok=False, err=type(err).__name__, msg=str(err)[:200])
            continue
        fut.add_done_callback(done(key, seq))
        sent += 1
        ahead = sent / args.rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(args.flush_timeout)
    producer.close(10)
    log("bye")
    conn.close()
    return 0


def group_settings(args: argparse.Namespace) -> GroupSettings | None:
    """GroupSettings() unless the scenario is about a group setting (a short session...)."""
    changes: dict[str, Any] = {}
    if args.session_ms is not None:
        changes["session_timeout_ms"] = args.session_ms
        changes["heartbeat_interval_ms"] = args.heartbeat_ms or max(args.session_ms // 5, 20)
    elif args.heartbeat_ms is not None:
        changes["heartbeat_interval_ms"] = args.heartbeat_ms
    if args.reclaim_ms is not None:
        changes["reclaim_idle_ms"] = args.reclaim_ms
    if args.group_acks is not None:
        changes["acks"] = args.group_acks
    return GroupSettings().with_changes(**changes) if changes else None


def parse_poison(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    key, _, seq = text.partition("#")
    return key, int(seq)


class AsyncShell:
    """PARTSTREAM_FAULT_SHELL=async: the worker drives an AsyncConsumer on an AsyncConnection,
    each call awaited on an event loop that runs in a thread of its own, so that one worker
    loop serves both shells. While the worker's handler sleeps (--work-ms, --slow-ms) the loop
    is free, as in an asyncio application whose handlers await: the heartbeat task goes on."""

    def __init__(self, group: str, topic: str, *, conn: Connection, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.aconn = self.run(connect_async(conn.config))
        self.c = self.run(AsyncConsumer(self.aconn, group, topic, **kw).start())
        self.member_id = self.c.member_id

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def poll(self, timeout: float) -> list[Any]:
        return self.run(self.c.poll(timeout=timeout))  # type: ignore[no-any-return]

    def commit(self, records: list[Any]) -> None:
        self.run(self.c.commit(records))

    def fence(self, topic: str, partition: int) -> str | None:
        return self.c.fence(topic, partition)

    @property
    def refused_acks(self) -> int:
        return self.c.refused_acks

    def close(self) -> None:
        try:
            self.run(self.c.close())
        finally:
            self.run(self.aconn.aclose())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def consume(args: argparse.Namespace, log: Log) -> int:
    conn = connect(client_config(args))
    config = ConsumerConfig(auto_commit=False)
    if args.fetch_count is not None:
        config = ConsumerConfig(auto_commit=False, fetch_count=args.fetch_count)
    shell = AsyncShell if os.environ.get("PARTSTREAM_FAULT_SHELL") == "async" else Consumer
    consumer = shell(
        args.group,
        args.topic,
        conn=conn,
        config=config,
        group_settings=group_settings(args),
        instance_id=args.instance_id,
    )
    member, group = consumer.member_id, args.group
    poison = parse_poison(args.poison)
    stop = threading.Event()
    SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    log("ready", member=member, group=group, lib=LIB, pid=os.getpid(), t=time.time())
    code = 0
    try:
        while not stop.is_set():
            t0 = time.time()
            try:
                batch = consumer.poll(timeout=0.5)
            except StateLostError as err:
                log("error", type="StateLostError", msg=str(err)[:300], t=time.time())
                code = 3
                break
            except ConnectionFailedError as err:
                log("retry", type=type(err).__name__, msg=str(err)[:200], t=time.time())
                time.sleep(0.1)
                continue
            except PartstreamError as err:
                log("error", type=type(err).__name__, msg=str(err)[:300], t=time.time())
                time.sleep(0.1)
                continue
            t1 = time.time()
            if batch and args.slow_ms:
                log("slow", t0=time.time(), ms=args.slow_ms)
                time.sleep(args.slow_ms / 1000)
                log("slow_end", t=time.time())
            by_part: dict[TopicPartition, list[Any]] = defaultdict(list)
            for r in batch:
                tp = TopicPartition(r.topic, r.partition)
                # The grant the record was read under (test-only peek at the fence value).
                fence = consumer.fence(tp.topic, tp.partition)
                token = int(fence.split(" ")[1]) if fence is not None else -1
                data = json.loads(r.value or b"{}")
                key, seq = data.get("key"), data.get("seq")
                if poison is not None and (key, seq) == poison:
                    log("poison", p=r.partition, id=r.id, key=key, seq=seq, member=member,
                        group=group, token=token, t=time.time())  # fmt: skip
                    os.kill(os.getpid(), signal.SIGKILL)
                if args.work_ms:
                    time.sleep(args.work_ms / 1000)
                log(
                    "proc", p=r.partition, id=r.id, key=key, seq=seq, member=member,
                    group=group, token=token, t0=t0, t1=t1, t=time.time(),
                )  # fmt: skip
                by_part[tp].append((r, token))
            for tp, items in by_part.items():
                recs = [r for r, _ in items]
                ids = [r.id for r in recs]
                token = items[0][1]
                t = time.time()
                fields = {"p": tp.partition, "ids": ids, "member": member, "group": group,
                          "token": token, "t": t}  # fmt: skip
                # Dropped meanwhile: nothing will be acked.
                if consumer.fence(tp.topic, tp.partition) is None:
                    log("ack", outcome="dropped", **fields)
                    continue
                # Intent first: a kill between the commit and its outcome line leaves an
                # "unknown" outcome, not a record the checker would wrongly call unacked.
                log("ack", outcome="unknown", **fields)
                try:
                    consumer.commit(recs)
                    outcome = "ok"
                except NotOwnerError:
                    outcome = "refused"
                except PartstreamError:
                    outcome = "unknown"
                log("ack", outcome=outcome, **fields)
    finally:
        log("refused_acks", n=consumer.refused_acks)
        try:
            consumer.close()
        except PartstreamError as err:
            log("error", type=type(err).__name__, msg=str(err)[:300], t=time.time())
        log("bye")
        conn.close()
    return code


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["produce", "consume"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--ns", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", required=True)
    # Settings: None = the library's default (see the module doc).
    ap.add_argument("--socket-timeout", type=float, default=None)
    # producer
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--value-bytes", type=int, default=0)
    ap.add_argument("--linger-ms", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--retries", type=int, default=None)
    ap.add_argument("--flush-timeout", type=float, default=120.0)
    ap.add_argument("--log-issue", action="store_true")
    ap.add_argument("--resume-from", default=None)
    ap.add_argument("--acks", default=None, help="ProducerConfig.acks: 1 or all")
    # consumer
    ap.add_argument("--session-ms", type=int, default=None)
    ap.add_argument("--heartbeat-ms", type=int, default=None)
    ap.add_argument("--reclaim-ms", type=int, default=None)
    ap.add_argument("--fetch-count", type=int, default=None)
    ap.add_argument("--instance-id", default=None)
    ap.add_argument("--work-ms", type=float, default=0.0)
    ap.add_argument("--slow-ms", type=float, default=0.0)
    ap.add_argument("--poison", default=None, help="KEY#SEQ: SIGKILL itself on handling it")
    ap.add_argument("--group-acks", default=None, help="GroupSettings.acks: 1 or all")
    args = ap.parse_args()
    log = Log(args.log)
    try:
        return produce(args, log) if args.role == "produce" else consume(args, log)
    except PartstreamError as err:
        log("error", type=type(err).__name__, msg=str(err)[:300], t=time.time())
        return 2


if __name__ == "__main__":
    sys.exit(main())
