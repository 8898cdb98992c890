"""An exactly-once pipeline process for the fault tests (run as a script, not a test).

It runs :func:`partitions.transform` from the input topic to ``--out``: each input record
(``{"key", "seq"}`` JSON, as the fault producer writes it) becomes ``--fanout`` outputs
``{"key", "seq", "j"}``, keyed ``<key>-<j>`` so one input's outputs spread over the output
partitions. Each call of the transform is logged (``{"ev": "fn", "p", "id", "key", "seq"}``)
before its commit, so the checker sees which inputs were transformed again after a kill (a
replay); ``--work-ms`` is the transform's own work per record. ``ready`` once the pipeline
has joined, ``bye`` with its stats on a graceful stop (SIGTERM). The consumer uses the
library's defaults except ``auto_commit`` (the pipeline acks) and, as the scenario says, the
session.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import partitions
from partitions import ClientConfig, GroupSettings, Output, Record, connect, transform
from partitions._consumer.consumer import Consumer
from tests.faults.worker import Log

LIB = str(Path(partitions.__file__).resolve().parent)


def die_before_ack(n: int, log: Log) -> None:
    """Fault injection (test-only, like worker.py's --poison): kill -9 this process right
    before the consumer's ``n``-th ack. In the idempotent mode that is the instant between
    an input's outputs and its ack, the one the marks must make harmless."""
    real = Consumer.commit
    count = [0]

    def commit(self: Consumer, records: Any = None) -> None:
        count[0] += 1
        if count[0] == n:
            log("die", acks=n, t=time.time())
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, records)

    Consumer.commit = commit  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ns", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--fanout", type=int, default=2)
    ap.add_argument("--instance-id", default=None)
    ap.add_argument("--session-ms", type=int, default=None)
    ap.add_argument("--work-ms", type=float, default=0.0, help="the transform's own work")
    ap.add_argument("--die-before-ack", type=int, default=0,
                    help="N: SIGKILL itself just before the consumer's Nth ack")  # fmt: skip
    args = ap.parse_args()
    log = Log(args.log)
    conn = connect(ClientConfig(url=args.url, namespace=args.ns))
    settings = None
    if args.session_ms:
        settings = GroupSettings().with_changes(
            session_timeout_ms=args.session_ms, heartbeat_interval_ms=max(args.session_ms // 5, 20)
        )
    if args.die_before_ack:
        die_before_ack(args.die_before_ack, log)
    log("ready", lib=LIB, pid=os.getpid(), cluster=conn.is_cluster, t=time.time())

    def fn(rec: Record) -> list[Output]:
        data = json.loads(rec.value or b"{}")
        key, seq = data["key"], data["seq"]
        log("fn", p=rec.partition, id=rec.id, key=key, seq=seq)
        if args.work_ms:
            time.sleep(args.work_ms / 1000)
        return [
            Output(args.out, {"key": key, "seq": seq, "j": j}, key=f"{key}-{j}")
            for j in range(args.fanout)
        ]

    stats = transform(
        fn, args.topic, args.group, conn=conn, mode=args.mode, group_settings=settings,
        instance_id=args.instance_id,
    )  # fmt: skip
    log("bye", **dataclasses.asdict(stats))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
