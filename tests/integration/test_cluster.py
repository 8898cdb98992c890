"""partstream on a real 3-master Valkey Cluster, started for this module and stopped by pid.

Checks that a topic's partitions spread over all nodes, that admin, apply, produce and replay
never hit CROSSSLOT, that server checks read every primary, and that moving a live
partition's slot to another node (the classic MIGRATING/IMPORTING resharding) loses no
record and keeps each key's order (invariants L and O) for the producer, a following
replay reader and a consumer group whose acks all land.

The cluster cannot start: skipped locally, a failure under CI.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.apply import execute, parse, plan
from partitions._admin.groups import group_lag, group_offsets
from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import EvictionPolicyError
from partitions._base.settings import GroupSettings
from partitions._client.cluster import EmbeddedCluster, free_base_port
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._client.nodes import node_name, primaries
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer, RecordFuture
from partitions.cli import main
from tests.helpers import drop_namespace, layout
from tests.integration.cluster_slots import migrate_slot, owner_of, shard_of

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    shared = os.environ.get("PARTSTREAM_TEST_CLUSTER_DIR")
    if shared:  # the suite runner's cluster: use it, it stops it
        yield EmbeddedCluster(shared)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ps-cluster-", dir="/tmp"))
    c = EmbeddedCluster(data_dir, masters=3, base_port=free_base_port(3))
    try:
        try:
            c.ensure_running(timeout=30)
        except Exception as err:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"cannot start a local cluster: {err}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def cconfig(cluster: EmbeddedCluster, namespace: str) -> ClientConfig:
    return ClientConfig(url=cluster.url, namespace=namespace)


@pytest.fixture
def cconn(cconfig: ClientConfig) -> Iterator[Connection]:
    c = connect(cconfig)
    try:
        yield c
    finally:
        try:
            drop_namespace(c, cconfig.namespace)
        finally:
            c.close()


def _keys_everywhere(conn: Connection) -> list[bytes]:
    pattern = f"{conn.config.namespace}:*"
    return [k for node in primaries(conn) for k in node.scan_iter(match=pattern)]


def test_cluster_forms_with_every_slot_and_reuses_running_nodes(
    cluster: EmbeddedCluster,
) -> None:
    assert cluster.is_running()
    pids = cluster.pids()
    assert len(pids) == len(cluster.ports) == 3 * (1 + cluster.replicas)
    assert len(cluster.primary_ports()) == 3
    again = EmbeddedCluster(cluster.data_dir)  # a later process: reads cluster.json
    assert again.ensure_running() == cluster.url
    assert again.pids() == pids  # reused, not restarted


def test_partitions_spread_over_all_nodes_and_describe_names_them(
    cluster: EmbeddedCluster, cconn: Connection
) -> None:
    admin = TopicAdmin(cconn)
    admin.create(TopicSpec("spread", 12))
    with Producer(cconn) as p:
        for part in range(12):
            p.send("spread", b"x", key=b"k", partition=part)
    desc = admin.describe("spread")
    nodes = {info.node for info in desc.partitions}
    assert nodes == {f"127.0.0.1:{port}" for port in cluster.primary_ports()}
    for info in desc.partitions:
        # The node named by describe really holds the partition's stream.
        port = int(str(info.node).rsplit(":", 1)[1])
        with cluster.client(port) as node:
            assert node.xlen(cconn.keys.stream(layout(cconn, "spread"), info.partition)) == 1
    assert desc.length == 12


def _fields(raw: Any) -> dict[str, Any]:
    """A CLUSTER SHARDS map (redis-py gives a dict or a flat list) with str keys."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs}


def _shards(node: Any) -> list[tuple[list[tuple[int, int]], int]]:
    """CLUSTER SHARDS as ([(first, last) slot ranges], primary port) per shard."""
    out = []
    for shard in node.execute_command("CLUSTER", "SHARDS"):
        fields = _fields(shard)
        flat = [int(s) for s in fields["slots"]]
        nodes = [_fields(n) for n in fields["nodes"]]
        (primary,) = [n for n in nodes if n["role"] in ("master", b"master")]
        out.append((list(zip(flat[::2], flat[1::2], strict=True)), int(primary["port"])))
    return out


def test_eight_partitions_land_3_3_2_on_three_primaries(
    cluster: EmbeddedCluster, cconn: Connection
) -> None:
    """The partitions' tags put them on evenly spaced slots: 3/3/2 over three primaries
    (the original tags {t:0}..{t:7} put 4 on one primary), by the server's own CLUSTER
    KEYSLOT and CLUSTER SHARDS; every key of a partition is in its slot."""
    meta = TopicAdmin(cconn).create(TopicSpec("eight", 8))
    port = cluster.primary_ports()[0]
    with cluster.client(port) as node:
        shards = _shards(node)
        assert len(shards) == 3
        owner: dict[int, int] = {}
        for p in range(8):
            keys = cconn.keys.partition_keys(meta.layout, p)
            found = {int(node.execute_command("CLUSTER", "KEYSLOT", k)) for k in keys}
            assert found == {meta.layout.slot(p)}
            (slot,) = found
            (owner[p],) = [prt for ranges, prt in shards if any(a <= slot <= b for a, b in ranges)]
        old = [
            int(node.execute_command("CLUSTER", "KEYSLOT", f"x:t:{{eight:{p}}}")) for p in range(8)
        ]
    per_node = sorted(Counter(owner.values()).values())
    assert per_node == [2, 3, 3]
    old_per_node = [sum(any(a <= s <= b for a, b in r) for s in old) for r, _ in shards]
    assert sorted(old_per_node) == [2, 2, 4]  # what the original tags would have done
    send = {p: f"v{p}" for p in range(8)}
    with Producer(cconn) as prod:
        for p, v in send.items():
            prod.send("eight", v, key="k", partition=p)
    for p, prt in owner.items():
        with cluster.client(prt) as node:
            assert node.xlen(cconn.keys.stream(meta.layout, p)) == 1  # on the node counted


def test_admin_apply_and_cli_work_without_crossslot(
    cconn: Connection, cconfig: ClientConfig
) -> None:
    admin = TopicAdmin(cconn)
    admin.create(TopicSpec("adm", 4))
    admin.alter("adm", partitions=8, max_length=1000)
    assert admin.get("adm").partitions == 8
    assert admin.names() == ["adm"]
    declared = parse(
        {
            "topics": {"adm": {"partitions": 8, "max_length": 1000}, "more": {"partitions": 5}},
            "groups": {"billing": {"session_timeout_ms": 30000}},
        }
    )
    execute(cconn, declared)
    assert admin.names() == ["adm", "more"]
    assert all(a.kind == "unchanged" for a in plan(cconn, declared))
    runner = CliRunner()
    base = ["--url", cconfig.url or "", "--namespace", cconfig.namespace]
    out = runner.invoke(main, [*base, "topic", "describe", "more", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert '"node": "127.0.0.1:' in out.output
    with Producer(cconn) as p:
        for i in range(100):
            p.send("adm", i, key=f"k{i}")
    assert admin.delete("adm") and admin.delete("more")
    left = [k for k in _keys_everywhere(cconn) if b":t:" in k]
    assert left == []


def test_produce_and_replay_keep_per_key_order(cconn: Connection) -> None:
    TopicAdmin(cconn).create(TopicSpec("ord", 9))
    with Producer(cconn, ProducerConfig(linger_ms=1)) as p:
        futs = [p.send("ord", {"k": i % 30, "n": i // 30}, key=f"k{i % 30}") for i in range(3000)]
    assert len({f.result(5).partition for f in futs}) == 9
    seen: dict[str, int] = {}
    count = 0
    for rec in replay(cconn, "ord"):
        body = rec.json()
        assert seen.get(f"k{body['k']}", -1) == body["n"] - 1  # no gap, no reorder
        seen[f"k{body['k']}"] = body["n"]
        count += 1
    assert count == 3000


def test_server_checks_read_every_primary(cluster: EmbeddedCluster, cconfig: ClientConfig) -> None:
    with connect(cconfig) as c:
        assert c.is_cluster and c.server.cluster
        assert c.server.maxmemory_policy == "noeviction"
    last = cluster.primary_ports()[-1]  # every primary, not only a seed, must be asked
    with cluster.client(last) as node:
        node.config_set("maxmemory-policy", "allkeys-lru")
        try:
            with pytest.raises(EvictionPolicyError):
                connect(cconfig.with_changes(strict_eviction_policy=True))
        finally:
            node.config_set("maxmemory-policy", "noeviction")


def test_producer_reloads_its_script_after_a_flush(cconn: Connection) -> None:
    TopicAdmin(cconn).create(TopicSpec("nos", 6))
    with Producer(cconn) as p:
        p.send("nos", b"a", key=b"x").result(5)
        for node in primaries(cconn):
            node.script_flush()
        futs = [p.send("nos", b"b", key=f"k{i}") for i in range(60)]
        assert all(f.result(5).id for f in futs)


def test_resharding_a_live_partition_loses_nothing_and_keeps_key_order(
    cluster: EmbeddedCluster, cconn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Move partition 0's slot while a producer sends keyed records and a reader follows."""
    caplog.set_level(logging.DEBUG, logger="partstream.producer")
    topic, n_keys = "live", 24
    TopicAdmin(cconn).create(TopicSpec(topic, 6))
    stream = cconn.keys.stream(layout(cconn, topic), 0)
    slot = int(cconn.client.keyslot(stream))
    src = owner_of(cluster, slot)
    dst = next(port for port in cluster.primary_ports() if port != src)

    stop_producing, stop_reading = threading.Event(), threading.Event()
    futures: list[RecordFuture] = []
    received: list[tuple[str, int, int]] = []  # (key, n, partition)

    def produce() -> None:
        with Producer(cconn, ProducerConfig(linger_ms=2, retry_backoff_ms=20)) as p:
            n = 0
            while not stop_producing.is_set():
                for k in range(n_keys):
                    futures.append(p.send(topic, {"k": k, "n": n}, key=f"key-{k}"))
                n += 1
                time.sleep(0.002)

    def follow() -> None:
        for rec in replay(cconn, topic, follow=True, block_ms=50, stop=stop_reading):
            body = rec.json()
            received.append((f"key-{body['k']}", body["n"], rec.partition))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    time.sleep(0.5)
    # Key by key with a pause (TRYAGAIN while the stream and its sequence hash are split),
    # then 1.5 s with every key on the target but the slot not handed over: only ASK-ing
    # the target gets through, the producer's retry budget (25 x 20 ms) would run out.
    moved = migrate_slot(cluster, slot, dst, keys_per_step=1, step_delay=0.1, finish_delay=1.5)
    time.sleep(0.5)
    stop_producing.set()
    writer.join(20)
    assert not writer.is_alive()
    metas = [f.result(10) for f in futures]  # raises if any send failed
    deadline = time.monotonic() + 15
    while len(received) < len(metas) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_reading.set()
    reader.join(5)

    assert moved >= 2  # the stream and its producer-sequence hash went over
    # dst, or its replica if a failover promoted it since (the suite's failover pass)
    shard = shard_of(cluster, dst)
    assert owner_of(cluster, slot) in shard
    assert node_name(cconn, stream) in {f"127.0.0.1:{port}" for port in shard}
    assert any(m.partition == 0 for m in metas)
    # L: everything acknowledged was read exactly once; O: each key in send order.
    assert len(received) == len(metas)
    last: dict[str, int] = {}
    for key, n, _ in received:
        assert n == last.get(key, -1) + 1, f"{key}: {n} after {last.get(key)}"
        last[key] = n
    # The move was seen by the producer (not a vacuous pass): it was redirected.
    redirects = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert any(e in m for m in redirects for e in ("MovedError", "AskError", "TryAgainError"))


def test_consumers_keep_consuming_while_a_partition_slot_migrates(
    cluster: EmbeddedCluster, cconfig: ClientConfig, cconn: Connection
) -> None:
    """Two consumers of one group read 6 partitions while partition 0's slot moves to another
    node: everything sent is processed (L), each key in order (O), every ack lands."""
    topic, n_keys = "cmove", 24
    TopicAdmin(cconn).create(TopicSpec(topic, 6))
    stream = cconn.keys.stream(layout(cconn, topic), 0)
    slot = int(cconn.client.keyslot(stream))
    src = owner_of(cluster, slot)
    dst = next(port for port in cluster.primary_ports() if port != src)
    settings = GroupSettings(session_timeout_ms=6000, heartbeat_interval_ms=500)

    stop_producing, stop_consuming = threading.Event(), threading.Event()
    futures: list[RecordFuture] = []
    seen: list[tuple[str, int, int]] = []  # (key, n, partition) in processing order
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce() -> None:
        with Producer(cconn, ProducerConfig(linger_ms=2, retry_backoff_ms=20)) as p:
            n = 0
            while not stop_producing.is_set():
                for k in range(n_keys):
                    futures.append(p.send(topic, {"k": k, "n": n}, key=f"key-{k}"))
                n += 1
                time.sleep(0.005)

    def consume(name: str) -> None:
        try:
            with (
                connect(cconfig) as conn,
                Consumer(
                    "movers", topic, conn=conn, instance_id=name, group_settings=settings
                ) as c,  # fmt: skip
            ):
                while not stop_consuming.is_set():
                    for rec in c.poll(timeout=0.1):
                        body = rec.json()
                        with lock:
                            seen.append((f"key-{body['k']}", body["n"], rec.partition))
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    readers = [threading.Thread(target=consume, args=(f"c{i}",), daemon=True) for i in (1, 2)]
    for t in readers:
        t.start()
    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    time.sleep(1.0)
    moved = migrate_slot(cluster, slot, dst, keys_per_step=1, step_delay=0.1, finish_delay=1.0)
    time.sleep(0.5)
    stop_producing.set()
    writer.join(20)
    assert not writer.is_alive()
    metas = [f.result(10) for f in futures]
    sent = {(m.partition, m.id) for m in metas}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            distinct = {(k, n) for k, n, _ in seen}
        if len(distinct) >= len(sent) and pending_total(cconn, topic, "movers") == 0:
            break
        time.sleep(0.1)
    stop_consuming.set()
    for t in readers:
        t.join(10)
    assert not errors, errors

    assert moved >= 3 and owner_of(cluster, slot) in shard_of(cluster, dst)
    assert any(m.partition == 0 for m in metas[len(metas) // 2 :])  # sent around the move
    # L: everything sent was processed; acks landed: nothing pending, no lag.
    assert {(k, n) for k, n, _ in seen} == {
        (f"key-{k}", n) for k in range(n_keys) for n in range(len(metas) // n_keys)
    }
    assert pending_total(cconn, topic, "movers") == 0
    assert group_lag(cconn, "movers").total_lag == 0
    # O: per key, first deliveries come in send order (a redelivery may repeat, never skip).
    last: dict[str, int] = {}
    for key, n, _ in seen:
        assert n <= last.get(key, -1) + 1, f"{key}: {n} after {last.get(key)}"
        last[key] = max(n, last.get(key, -1))


def pending_total(conn: Connection, topic: str, group: str) -> int:
    return sum(o.pending for o in group_offsets(conn, group, topic))
