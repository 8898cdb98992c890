"""Slot moves on the embedded cluster, for the cluster tests only (not in the package):
who serves a slot, and a live migration of one slot with its keys."""

from __future__ import annotations

import time

import redis

from partitions._base.errors import ConfigError
from partitions._client.cluster import EmbeddedCluster


def owner_of(cluster: EmbeddedCluster, slot: int) -> int:
    """The port of the node that serves ``slot`` now (asked of the first live node)."""
    for port in cluster.ports:
        try:
            with cluster.client(port) as node:
                ranges = node.execute_command("CLUSTER", "SLOTS")
        except (redis.RedisError, OSError):
            continue
        for lo, hi, primary, *_ in ranges:
            if lo <= slot <= hi:
                return int(primary[1])
    raise ConfigError(f"slot {slot} is not served by any node")


def shard_of(cluster: EmbeddedCluster, port: int) -> set[int]:
    """The ports of ``port``'s shard as the cluster sees it now: the node, its master and its
    replicas. After a failover the slots a node took are served by its promoted replica: a
    test that moved a slot to ``port`` accepts any node of this set as its owner."""
    for asked in cluster.ports:
        try:
            with cluster.client(asked) as node:
                raw = node.execute_command("CLUSTER", "NODES")
        except (redis.RedisError, OSError):
            continue
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        rows = [line.split() for line in text.splitlines() if len(line.split()) >= 8]
        ids = {int(r[1].split("@")[0].rsplit(":", 1)[1]): (r[0], r[3]) for r in rows}
        if port not in ids:
            continue
        me, master = ids[port]
        root = me if master == "-" else master
        return {p for p, (nid, mid) in ids.items() if root in (nid, mid)}
    return {port}


def migrate_slot(
    cluster: EmbeddedCluster,
    slot: int,
    to_port: int,
    *,
    keys_per_step: int = 100,
    step_delay: float = 0.0,
    finish_delay: float = 0.0,
) -> int:
    """Move ``slot`` with its keys to the node on ``to_port``, live, the classic way.

    IMPORTING on the target, MIGRATING on the source, MIGRATE ``keys_per_step`` keys at a
    time, then SETSLOT NODE on the target, the source and the others. Returns the number
    of keys moved. Tests widen the windows a client sees: ``step_delay`` between steps
    (TRYAGAIN for a script whose keys are split) and ``finish_delay`` once every key is
    on the target but the slot is not yet handed over (ASK for every command).
    """
    from_port = owner_of(cluster, slot)
    if from_port == to_port:
        return 0
    src_id, dst_id = cluster.node_id(from_port), cluster.node_id(to_port)
    moved = 0
    with cluster.client(from_port) as src, cluster.client(to_port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(step_delay)
        time.sleep(finish_delay)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for port in cluster.primary_ports():
        if port not in (from_port, to_port):
            with cluster.client(port) as other:
                other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return moved
