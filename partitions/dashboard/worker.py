"""One demo consumer process: ``python -m partitions.dashboard.worker --group G ...``.

It consumes the demo topic as a member of its group, checks per-tenant order (an event's
``step`` must never go back within the ids of a partition), fails the records the fleet asks
it to (poison: every delivery fails, so after ``max_deliveries`` they are dead-lettered) and
reports its counters to ``<runtime>/<worker id>.json`` twice a second. SIGTERM closes the
consumer gracefully (commit, release, leave).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from partitions._base.records import Record
from partitions._base.signals import SignalRelay
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import connect
from partitions._consumer.consumer import Consumer

# Simulated work per record, like the reference demo's 25 ms but smaller: a fleet of three
# must keep up with a few hundred events per second on two cores.
WORK_S = 0.002


class Checker:
    """Per-tenant order check and poison bookkeeping for one worker."""

    def __init__(self, runtime: Path) -> None:
        self.control = runtime / "control.json"
        self.version = 0
        self.mtime = 0
        self.granted: dict[str, int] = {}  # tenant -> failures already taken from control
        self.remaining: dict[str, int] = {}
        self.poison: set[str] = set()
        # (topic, partition) -> (run, tenant) -> last step seen
        self.last_step: dict[tuple[str, int], dict[tuple[str, str], int]] = {}
        self.last_id: dict[tuple[str, int], tuple[int, int]] = {}
        self.processed = self.failed = self.out_of_order = self.redelivered = 0
        self.last: dict[str, Any] | None = None

    def refresh_control(self) -> None:
        try:
            mtime = self.control.stat().st_mtime_ns
            if mtime == self.mtime:
                return
            self.mtime = mtime
            data = json.loads(self.control.read_text())
        except (OSError, ValueError):
            return
        if data.get("version", 0) == self.version:
            return
        self.version = data["version"]
        for tenant, total in data.get("fail", {}).items():
            delta = int(total) - self.granted.get(tenant, 0)
            if delta > 0:
                self.remaining[tenant] = self.remaining.get(tenant, 0) + delta
                self.granted[tenant] = int(total)

    def should_fail(self, record: Record, tenant: str) -> bool:
        if record.id in self.poison:
            return True
        if self.remaining.get(tenant, 0) > 0:
            self.remaining[tenant] -= 1
            self.poison.add(record.id)
            return True
        return False

    def check(self, record: Record, event: dict[str, Any]) -> None:
        pos = tuple(int(x) for x in record.id.split("-"))
        pkey = (record.topic, record.partition)
        prev = self.last_id.get(pkey)
        if prev is not None and pos <= prev:
            # The partition was rewound (group reset) or redelivered after a takeover: its
            # tenants start over.
            self.redelivered += 1
            self.last_step[pkey] = {}
        self.last_id[pkey] = (pos[0], pos[1])
        steps = self.last_step.setdefault(pkey, {})
        tenant_key = (str(event.get("run", "")), str(event.get("tenant")))
        step = int(event.get("step", 0))
        last = steps.get(tenant_key)
        if last is not None and step < last:
            self.out_of_order += 1
        steps[tenant_key] = step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--runtime", required=True, type=Path)
    args = ap.parse_args()

    stop = threading.Event()
    SignalRelay.setting(stop).install()  # SIGTERM, SIGINT; for the life of the process
    checker = Checker(args.runtime)
    status = args.runtime / f"{args.worker_id}.json"

    conn = connect(ClientConfig(url=args.url, namespace=args.namespace))
    consumer = Consumer(args.group, args.topic, conn=conn, config=ConsumerConfig(block_ms=200))

    def report() -> None:
        data = {
            "pid": os.getpid(),
            "member_id": consumer.member_id,
            "processed": checker.processed,
            "failed": checker.failed,
            "out_of_order": checker.out_of_order,
            "redelivered": checker.redelivered,
            "partitions": sorted(tp.partition for tp in consumer.assignment()),
            "last": checker.last,
            "updated": int(time.time() * 1000),
        }
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(status)

    next_report = 0.0
    parent = os.getppid()
    try:
        while not stop.is_set():
            if os.getppid() != parent:
                break  # the demo that started us is gone: leave the group cleanly

            records = consumer.poll(timeout=0.3)
            # After the poll: an instruction written while it waited applies to what it got.
            checker.refresh_control()
            for record in records:
                event = record.json()
                tenant = str(event.get("tenant"))
                if checker.should_fail(record, tenant):
                    checker.failed += 1
                    consumer.nack(record)
                    continue
                checker.check(record, event)
                time.sleep(WORK_S)
                checker.processed += 1
                checker.last = {"partition": record.partition, "id": record.id, "tenant": tenant}
            if time.monotonic() >= next_report:
                report()
                next_report = time.monotonic() + 0.5
    finally:
        consumer.close()
        report()
        conn.close()


if __name__ == "__main__":
    main()
