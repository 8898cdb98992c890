"""A consumer process for the poll-interval test (run as a script, not a test).

Polls a Consumer one record at a time with auto-commit (a record is acked by the next poll)
and prints one JSON line per event, flushed:

* {"ev": "ready", "m": member}
* {"ev": "hang", "m", "p", "id", "v", "tok", "t"}: with --hang-first, the handler of the first
  record blocks until --release-file exists (at most --hang-limit-s), like a call without a
  timeout; then that record completes as a "rec" event.
* {"ev": "rec", "m", "p", "id", "v", "tok", "t"}: a record processed (printed before its ack).
* {"ev": "removed", "msg", "parts", "t"}: poll() raised PollIntervalExceededError.
* {"ev": "bye", "refused_acks": n} after SIGTERM closed the consumer.

``t`` is time.monotonic(), comparable between processes on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from partitions._base.errors import PollIntervalExceededError
from partitions._base.records import Record
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
    ap.add_argument("--session-ms", type=int, required=True)
    ap.add_argument("--heartbeat-ms", type=int, required=True)
    ap.add_argument("--max-poll-ms", type=int, required=True)
    ap.add_argument("--hang-first", action="store_true")
    ap.add_argument("--release-file", default="")
    ap.add_argument("--hang-limit-s", type=float, default=60.0)
    args = ap.parse_args()

    stop = threading.Event()
    SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    conn = connect(url=args.url, namespace=args.ns)
    consumer = Consumer(
        args.group,
        args.topic,
        conn=conn,
        config=ConsumerConfig(fetch_count=50, block_ms=100, max_poll_interval_ms=args.max_poll_ms),
        group_settings=GroupSettings(
            session_timeout_ms=args.session_ms, heartbeat_interval_ms=args.heartbeat_ms
        ),
    )
    emit(ev="ready", m=consumer.member_id)

    def event(ev: str, rec: Record) -> None:
        fence = consumer.fence(rec.topic, rec.partition) or "? 0"
        emit(
            ev=ev,
            m=consumer.member_id,
            p=rec.partition,
            id=rec.id,
            v=(rec.value or b"").decode(),
            tok=int(fence.split()[1]),
            t=time.monotonic(),
        )

    hang = args.hang_first
    while not stop.is_set():
        try:
            batch = consumer.poll(max_records=1, timeout=0.1)
        except PollIntervalExceededError as err:
            emit(ev="removed", msg=str(err), parts=sorted(err.partitions), t=time.monotonic())
            continue
        for rec in batch:
            if hang:
                hang = False
                event("hang", rec)
                end = time.monotonic() + args.hang_limit_s
                while not os.path.exists(args.release_file) and time.monotonic() < end:
                    if stop.wait(0.05):
                        break
            event("rec", rec)
    consumer.close()
    emit(ev="bye", refused_acks=consumer.refused_acks)
    conn.close()


if __name__ == "__main__":
    main()
