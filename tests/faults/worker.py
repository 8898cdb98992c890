"""A producer or consumer process for the fault tests (run as a script, not a test).

Every outcome is one JSON line, flushed at once, in the file named by ``--log`` (a kill -9
tears at most the last line, which the reader skips):

* producer: ``{"ev": "sent", "key", "seq", "ok": true, "p", "id"}`` when a send was
  acknowledged, ``"ok": false, "err": <type>`` when its future failed (outcome in doubt);
* consumer: ``{"ev": "proc", "p", "id", "key", "seq", "member", "token", "t0", "t1", "t"}``
  for each record processed (``t0``/``t1``: when the poll that handed it out started and
  returned), then ``{"ev": "ack", "p", "ids", "token", "outcome": ok|refused|unknown|dropped,
  "t"}`` for the commit of that partition's records (``t``: when the commit started), first
  with outcome ``unknown`` just before the commit, then with its real outcome;
* both: ``ready``, ``error`` (typed errors, e.g. StateLostError), ``bye``.

Times are ``time.time()`` of one machine. SIGTERM closes gracefully.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import defaultdict
from typing import Any, TextIO

from coordinator.errors import (
    ConnectionFailedError,
    NotOwnerError,
    PartstreamError,
    StateLostError,
)
from coordinator.settings import GroupSettings
from coordinator.types import TopicPartition
from partitions.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions.connection import connect
from partitions.consumer import Consumer
from partitions.producer import Producer, RecordFuture


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


def produce(args: argparse.Namespace, log: Log) -> int:
    conn = connect(
        ClientConfig(url=args.url, namespace=args.ns, socket_timeout=args.socket_timeout)
    )
    log("ready", idmp=conn.server.has("idmp"), server=conn.server.describe())
    cfg = ProducerConfig(
        linger_ms=2, batch_size=args.batch, retries=args.retries, retry_backoff_ms=100
    ).with_changes(acks=args.acks)
    producer = Producer(conn, cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seqs: dict[str, int] = defaultdict(int)
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

    for i in range(args.count):
        if stop.is_set():
            break
        key = f"k{i % args.keys}"
        seqs[key] += 1
        seq = seqs[key]
        value = json.dumps({"key": key, "seq": seq}).encode()
        try:
            fut = producer.send(args.topic, value, key=key)
        except PartstreamError as err:
            log("sent", key=key, seq=seq, ok=False, err=type(err).__name__, msg=str(err)[:200])
            continue
        fut.add_done_callback(done(key, seq))
        ahead = (i + 1) / args.rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)
    producer.close(10)
    log("bye")
    conn.close()
    return 0


def consume(args: argparse.Namespace, log: Log) -> int:
    conn = connect(
        ClientConfig(url=args.url, namespace=args.ns, socket_timeout=args.socket_timeout)
    )
    settings = GroupSettings(
        session_timeout_ms=args.session_ms,
        heartbeat_interval_ms=args.heartbeat_ms,
        reclaim_idle_ms=args.reclaim_ms,
    ).with_changes(acks=args.group_acks)
    config = ConsumerConfig(auto_commit=False, fetch_count=args.max_records, block_ms=200)
    consumer = Consumer(args.group, args.topic, conn=conn, config=config, group_settings=settings)
    member = consumer.member_id
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log("ready", member=member)
    code = 0
    try:
        while not stop.is_set():
            t0 = time.time()
            try:
                batch = consumer.poll(max_records=args.max_records, timeout=0.5)
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
            by_part: dict[TopicPartition, list[Any]] = defaultdict(list)
            for r in batch:
                tp = TopicPartition(r.topic, r.partition)
                # The grant the record was read under (test-only peek at the fence value).
                st = consumer._parts.get(tp)
                token = int(st.fence.split(" ")[1]) if st is not None else -1
                data = json.loads(r.value or b"{}")
                if args.work_ms:
                    time.sleep(args.work_ms / 1000)
                log(
                    "proc", p=r.partition, id=r.id, key=data.get("key"), seq=data.get("seq"),
                    member=member, token=token, t0=t0, t1=t1, t=time.time(),
                )  # fmt: skip
                by_part[tp].append((r, token))
            for tp, items in by_part.items():
                recs = [r for r, _ in items]
                ids = [r.id for r in recs]
                token = items[0][1]
                t = time.time()
                if tp not in consumer._parts:  # dropped meanwhile: nothing will be acked
                    log(
                        "ack",
                        p=tp.partition,
                        ids=ids,
                        member=member,
                        token=token,
                        outcome="dropped",
                        t=t,
                    )
                    continue
                # Intent first: a kill between the commit and its outcome line leaves an
                # "unknown" outcome, not a record the checker would wrongly call unacked.
                log(
                    "ack",
                    p=tp.partition,
                    ids=ids,
                    member=member,
                    token=token,
                    outcome="unknown",
                    t=t,
                )
                try:
                    consumer.commit(recs)
                    outcome = "ok"
                except NotOwnerError:
                    outcome = "refused"
                except PartstreamError:
                    outcome = "unknown"
                log(
                    "ack", p=tp.partition, ids=ids, member=member, token=token, outcome=outcome, t=t
                )
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
    ap.add_argument("--socket-timeout", type=float, default=10.0)
    # producer
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--retries", type=int, default=100)
    ap.add_argument("--acks", default="1", help="ProducerConfig.acks: 1 or all")
    # consumer
    ap.add_argument("--session-ms", type=int, default=1000)
    ap.add_argument("--heartbeat-ms", type=int, default=200)
    ap.add_argument("--reclaim-ms", type=int, default=60_000)
    ap.add_argument("--max-records", type=int, default=50)
    ap.add_argument("--work-ms", type=float, default=0.0)
    ap.add_argument("--group-acks", default="1", help="GroupSettings.acks: 1 or all")
    args = ap.parse_args()
    log = Log(args.log)
    try:
        return produce(args, log) if args.role == "produce" else consume(args, log)
    except PartstreamError as err:
        log("error", type=type(err).__name__, msg=str(err)[:300], t=time.time())
        return 2


if __name__ == "__main__":
    sys.exit(main())
