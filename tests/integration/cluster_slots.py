"""Slot moves on the embedded cluster, for the cluster tests only (not in the package):
who serves a slot, and a live migration of one slot with its keys."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
    """The ports of ``port``'s shard: a first master and the replicas started for it. A
    failover keeps slots inside their shard (a replica takes its master's over, the old master
    comes back as its replica), so a test that moved a slot to ``port`` accepts any of these
    as its owner after one."""
    for i, master in enumerate(cluster.ports[: cluster.masters]):
        shard = {master, *cluster.replica_ports(i)}
        if port in shard:
            return shard
    return {port}


# A slot migration and the suite's failover pass (tests/__main__.py) take turns on this lock
# in the cluster's directory: a resharding script, an operator's or this one, is not run
# while a primary is being replaced (its SETSLOT and MIGRATE steps name the dead node), and
# the kill waits until a migration's last step is done. The test around it runs on.
MIGRATION_LOCK = "migrating.lock"


@contextmanager
def migration_lock(cluster: EmbeddedCluster) -> Iterator[None]:
    """Hold the cluster's migration lock (exclusive flock) for the ``with`` block."""
    with open(cluster.data_dir / MIGRATION_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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

    Holds :func:`migration_lock`; ``to_port``'s shard's primary of the moment is the target
    (after a failover, the replica promoted in its place).
    """
    with migration_lock(cluster):
        shard = shard_of(cluster, to_port)
        to_port = next((p for p in cluster.primary_ports() if p in shard), to_port)
        return _migrate(cluster, slot, to_port, keys_per_step, step_delay, finish_delay)


def _migrate(
    cluster: EmbeddedCluster,
    slot: int,
    to_port: int,
    keys_per_step: int,
    step_delay: float,
    finish_delay: float,
) -> int:
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
