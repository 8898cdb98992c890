"""The ACL roles on a cluster: normal work passes under each role on every node, and the
producer still cannot read or trim its topic there. ACL users are per node, so each primary
gets the same rules (as a provisioning tool would set them). The single-server ACL tests,
on Redis 7 and on Valkey, are in test_security.py."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from partitions import Output, Pipeline
from partitions._admin.acl import acl_rules
from partitions._admin.groups import GroupAdmin
from partitions._admin.library import load_library
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from tests.helpers import layout, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "Cl-acl-s3cret"
FAST = GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=500)
MANUAL = ConsumerConfig(auto_commit=False)  # a pipeline acks


def _nodes(conn: Connection) -> list[Any]:
    """Every node, replicas too: a failover promotes one, and it must know the users then.
    Waits (up to 60 s) until each answers, so a node being restarted gets the rules too."""
    conn.client.nodes_manager.initialize()
    nodes = [conn.client.get_redis_connection(n) for n in conn.client.get_nodes()]
    for node in nodes:
        wait_for(lambda node=node: _answers(node), 60, f"node {node} to answer")
    return nodes


def _answers(node: Any) -> bool:
    try:
        return bool(node.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def users(conn: Connection) -> Iterator[dict[str, str]]:
    if not conn.is_cluster:
        pytest.skip("a cluster test; the single-server ACL tests are in test_security.py")
    # The local cluster is Valkey, which has CLIENT SETINFO (redis-py sends it on connect).
    ns = conn.keys.ns
    tag = ns[-6:]
    names = {role: f"{role}-{tag}" for role in ("producer", "consumer", "pipeline", "admin")}
    common: dict[str, Any] = {"namespace": ns, "password": PASSWORD, "client_setinfo": True}
    rules = {
        "producer": acl_rules("producer", user=names["producer"], topics=["orders"], **common),
        "consumer": acl_rules(
            "consumer", user=names["consumer"], topics=["orders"], groups=["billing"], **common
        ),
        "pipeline": acl_rules(
            "pipeline",
            user=names["pipeline"],
            topics=["orders"],
            groups=["enrich"],
            outputs=["derived"],
            **common,
        ),
        "admin": acl_rules("admin", user=names["admin"], **common),
    }
    nodes = _nodes(conn)
    for node in nodes:
        for r in rules.values():
            node.execute_command("ACL", "SETUSER", *r)
        node.execute_command("ACL", "LOG", "RESET")
    # Every seed: a client connects while one of them is down or failing over.
    seeds = conn.url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    try:
        yield {role: f"redis+cluster://{u}:{PASSWORD}@{seeds}" for role, u in names.items()}
    finally:
        for node in nodes:
            with contextlib.suppress(redis.RedisError):
                node.execute_command("ACL", "DELUSER", *names.values())


# A producer's one question per node whether its user may send MULTI batches (a transaction
# that changes nothing): refused under the least-privilege rules, by design.
PROBE = ("multi", "xrevrange", "xtrim", "xdel", "exec")


def _denials(conn: Connection, user: str, role: str = "") -> list[Any]:
    out = []
    for node in _nodes(conn):
        for e in node.execute_command("ACL", "LOG"):
            fields = e if isinstance(e, dict) else dict(zip(e[::2], e[1::2], strict=False))
            name = fields.get(b"username", fields.get("username"))
            obj = fields.get(b"object", fields.get("object"))
            name = name.decode() if isinstance(name, bytes) else name
            obj = obj.decode() if isinstance(obj, bytes) else obj
            # CONFIG is never granted, by design; nor is what the probe asks (above)
            if name == user and obj != "config|get" and not (role == "producer" and obj in PROBE):
                out.append(fields)
    return out


def test_each_role_works_on_every_node_of_the_cluster(
    conn: Connection, users: dict[str, str]
) -> None:
    ns = conn.keys.ns
    with connect(ClientConfig(url=users["admin"], namespace=ns)) as admin:
        load_library(admin)  # on every primary, as `partstream functions load` does
        TopicAdmin(admin).create(TopicSpec("orders", 6))  # partitions spread over the nodes
        TopicAdmin(admin).create(TopicSpec("derived", 6))
        GroupAdmin(admin).create("billing", FAST)
        GroupAdmin(admin).create("enrich", FAST)
    with (
        connect(ClientConfig(url=users["producer"], namespace=ns)) as pc,
        Producer(pc, ProducerConfig(linger_ms=1)) as p,
    ):
        metas = [p.send("orders", f"v{i}", partition=i % 6).result(10) for i in range(60)]
        assert {m.partition for m in metas} == set(range(6))
    got: list[Any] = []
    with (
        connect(ClientConfig(url=users["consumer"], namespace=ns)) as cc,
        Consumer("billing", "orders", conn=cc, group_settings=FAST) as c,
    ):
        end = time.monotonic() + 30
        while len(got) < 60 and time.monotonic() < end:
            got += c.poll(timeout=0.5)
        c.poll(timeout=0.2)  # the last batch's acks ride on this read
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(60))
    # A pipeline (the idempotent mode, a Cluster's) from orders to derived, under its role.
    done = 0
    with (
        connect(ClientConfig(url=users["pipeline"], namespace=ns)) as plc,
        Consumer("enrich", "orders", conn=plc, config=MANUAL, group_settings=FAST) as c,
        Pipeline(c, plc) as pipe,
    ):
        assert pipe.mode == "idempotent"
        end = time.monotonic() + 30
        while done < 60 and time.monotonic() < end:
            for rec in c.poll(timeout=0.5):
                pipe.send_and_commit(rec, [Output("derived", b"d-" + (rec.value or b""), rec.key)])
                done += 1
    with connect(ClientConfig(url=users["admin"], namespace=ns)) as admin:
        lay = layout(admin, "derived")
        outs = [
            f[b"value"] for p in range(6) for _, f in admin.client.xrange(admin.keys.stream(lay, p))
        ]
    assert sorted(outs) == sorted(f"d-v{i}".encode() for i in range(60))
    short = {k: v.rsplit("@", 1)[0].split("//", 1)[1].split(":", 1)[0] for k, v in users.items()}
    for role in ("producer", "consumer", "pipeline", "admin"):
        assert _denials(conn, short[role], role) == [], role  # nothing refused in normal work
    with connect(ClientConfig(url=users["producer"], namespace=ns)) as pc:
        for part in range(6):  # on whichever node holds it: no read, no trim
            stream = pc.keys.stream(layout(pc, "orders"), part)
            for cmd in (("XRANGE", stream, "-", "+"), ("XTRIM", stream, "MAXLEN", "0")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    pc.client.execute_command(*cmd)
