"""A consumer process for the multi-process tests (run as a script, not a test).

Polls a Consumer one record at a time (auto-commit: a record is acked once the loop polls
again; the ack rides on the next fenced read) and prints one JSON line per processed
record, flushed *before* the record can be acked:
{"ev": "rec", "m": member, "p": partition, "id": id, "v": value, "tok": grant token,
"t": monotonic time}. A record whose value equals --fail-value is nacked every time (a
handler that keeps failing). SIGTERM closes gracefully and prints
{"ev": "bye", "refused_acks": n, "dead_lettered": n}.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._client.config import ConsumerConfig
from partitions._client.connection import connect
from partitions._consumer.consumer import Consumer


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ns", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--session-ms", type=int, default=1000)
    ap.add_argument("--heartbeat-ms", type=int, default=200)
    ap.add_argument("--max-deliveries", type=int, default=5)
    ap.add_argument("--fail-value")
    ap.add_argument("--pause-every", type=int, default=0, help="sleep 2 ms every N records")
    args = ap.parse_args()

    stop = threading.Event()
    SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    conn = connect(url=args.url, namespace=args.ns)
    settings = GroupSettings(
        session_timeout_ms=args.session_ms,
        heartbeat_interval_ms=args.heartbeat_ms,
        max_deliveries=args.max_deliveries,
    )
    consumer = Consumer(
        args.group,
        args.topic,
        conn=conn,
        config=ConsumerConfig(fetch_count=200, block_ms=100),
        group_settings=settings,
    )
    emit(ev="ready", m=consumer.member_id)
    fail = args.fail_value.encode() if args.fail_value else None
    n = 0
    while not stop.is_set():
        batch = consumer.poll(max_records=1, timeout=0.1)
        if not batch:
            continue
        rec = batch[0]
        if rec.value == fail:
            emit(ev="fail", m=consumer.member_id, p=rec.partition, id=rec.id)
            consumer.nack(rec)
        else:
            fence = consumer.fence(rec.topic, rec.partition) or "? 0"
            emit(
                ev="rec",
                m=consumer.member_id,
                p=rec.partition,
                id=rec.id,
                v=(rec.value or b"").decode(),
                tok=int(fence.split()[1]),
                t=time.monotonic(),
            )
            n += 1
            if args.pause_every and n % args.pause_every == 0:
                time.sleep(0.002)
    consumer.close()
    emit(ev="bye", refused_acks=consumer.refused_acks, dead_lettered=consumer.dead_lettered)
    conn.close()


if __name__ == "__main__":
    main()
