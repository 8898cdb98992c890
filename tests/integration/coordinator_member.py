"""A member process for the coordinator's multi-process tests (run as a script, not a test).

Runs a MemberRunner; claims each granted partition's fence and releases it on revocation,
like the consumer does. Every 20 ms, while its session is alive, it performs a *fenced read*
of each owned partition: a script that appends "<member_id> <token>" to a per-partition test
log only if the fence still holds exactly this grant. The test checks those logs: tokens per
partition never go backwards, so no superseded owner ever "read" after a newer one.

Prints JSON lines on stdout: {"ev": assigned|revoked|lost|ready|bye, "tps": [...], "t": ...}.
SIGTERM closes gracefully (a static member leaves temporarily, keeping its partitions).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from coordinator.member import Member
from coordinator.runner import MemberRunner
from partitions._base.fence import claim_fence, fence_value, release_fence
from partitions._base.keys import TopicLayout
from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._base.types import Grant, TopicPartition
from partitions._client.connection import connect

FENCED_READ = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

_out = threading.Lock()


def emit(ev: str, **fields: object) -> None:
    with _out:
        sys.stdout.write(json.dumps({"ev": ev, "t": time.monotonic(), **fields}) + "\n")
        sys.stdout.flush()


def tps_json(tps: object) -> list[list[object]]:
    return sorted([tp.topic, tp.partition] for tp in tps)  # type: ignore[attr-defined]


def read_log_key(keys: object, layout: TopicLayout, partition: int) -> str:
    return keys.stream(layout, partition) + ":testreads"  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ns", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--member-id", required=True)
    ap.add_argument("--instance-id")
    ap.add_argument("--session-ms", type=int, default=1000)
    ap.add_argument("--heartbeat-ms", type=int, default=200)
    args = ap.parse_args()

    conn = connect(url=args.url, namespace=args.ns)
    client, keys, group = conn.client, conn.keys, args.group
    # The topic has no metadata here (a coordinator test): its partitions have the original
    # tags, as test_coordinator_processes.py reads them.
    lay = TopicLayout(args.topic, args.partitions)
    fenced_read = client.register_script(FENCED_READ)
    grants: dict[TopicPartition, Grant] = {}
    lock = threading.Lock()

    class Listener:
        def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            with lock:
                for tp in revoked:
                    g = grants.pop(tp, None)
                    if g is not None:
                        release_fence(client, keys, group, lay, tp.partition, mid, g.token)
            emit("revoked", tps=tps_json(revoked))

        def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
            with lock:
                for tp, g in assigned.items():
                    if claim_fence(client, keys, group, lay, tp.partition, mid, g.token):
                        grants[tp] = g
            emit("assigned", tps=tps_json(assigned))

        def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
            with lock:
                for tp in lost:
                    grants.pop(tp, None)
            emit("lost", tps=tps_json(lost))

    mid = args.member_id
    settings = GroupSettings(
        session_timeout_ms=args.session_ms, heartbeat_interval_ms=args.heartbeat_ms
    )
    member = Member(
        client,
        keys,
        group,
        {args.topic: args.partitions},
        member_id=mid,
        instance_id=args.instance_id,
        client_info=f"test-proc {mid}",
        settings=settings,
    )
    runner = MemberRunner(member, Listener())
    stop = threading.Event()
    SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    runner.start()
    emit("ready")
    while not stop.wait(0.02):
        if not runner.session_alive(margin=0.05):
            continue  # the server may have evicted us: do not touch partitions
        with lock:
            held = dict(grants)
        for tp, g in held.items():
            fenced_read(
                keys=[
                    keys.fence(lay, tp.partition),
                    read_log_key(keys, lay, tp.partition),
                ],
                args=[group, fence_value(mid, g.token)],
            )
    runner.close(temporary=args.instance_id is not None)
    emit("bye")
    conn.close()


if __name__ == "__main__":
    main()
