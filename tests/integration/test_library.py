"""The server-side library: loaded where it is missing (a restarted-empty server, a new or
promoted primary), reported per primary by ``partstream functions status``, and what a user
who may not load it is told."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.functions import library_name, version
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main

pytestmark = pytest.mark.integration


def primaries(conn: Connection) -> list[Any]:
    if not conn.is_cluster:
        return [conn.client]
    return [conn.client.get_redis_connection(n) for n in conn.client.get_primaries()]


def cli(conn: Connection, *args: str) -> Any:
    return CliRunner().invoke(main, ["--url", conn.url, "--namespace", conn.keys.ns, *args])


def test_a_primary_without_the_library_gets_it_back_and_status_tells(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("lib", 4))
    with Producer(conn) as p:
        p.send("lib", "before", partition=0).result(10)
    for node in primaries(conn):  # as after a restart without persistence, or a new node
        with contextlib.suppress(redis.ResponseError):  # a node no call has reached yet
            node.execute_command("FUNCTION", "DELETE", library_name())
    status = cli(conn, "functions", "status", "--format", "json")
    assert status.exit_code == 1
    assert all(not row["current"] for row in json.loads(status.output))
    with Producer(conn) as p:  # this user may load it: each partition's node gets it back
        ids = [p.send("lib", f"after {i}", partition=i).result(10) for i in range(4)]
    assert len(ids) == 4
    with Consumer("g", "lib", conn=conn) as c:
        got: list[Any] = []
        for _ in range(50):
            got += c.poll(timeout=0.2)
            if len(got) >= 5:
                break
    assert len(got) == 5
    status = cli(conn, "functions", "status", "--format", "json")
    assert status.exit_code == 0, status.output
    rows = json.loads(status.output)
    assert len(rows) == len(primaries(conn)) and all(version() in r["versions"] for r in rows)


def test_functions_load_and_prune(conn: Connection) -> None:
    old = (
        "#!lua name=partstream_000000000000\n"
        "redis.register_function('ps_x_000000000000', function() return 1 end)"
    )
    for node in primaries(conn):
        node.execute_command("FUNCTION", "LOAD", "REPLACE", old)
    res = cli(conn, "functions", "load", "--prune", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert all("000000000000" in r["pruned"] and r["versions"] == [version()] for r in rows)


def test_apply_loads_the_library_on_every_primary(conn: Connection, tmp_path: Any) -> None:
    for node in primaries(conn):
        with contextlib.suppress(redis.ResponseError):
            node.execute_command("FUNCTION", "DELETE", library_name())
    cfg = tmp_path / "t.toml"
    cfg.write_text("[topics.applied]\npartitions = 2\n")
    res = cli(conn, "apply", str(cfg))
    assert res.exit_code == 0, res.output
    status = cli(conn, "functions", "status", "--format", "json")
    assert status.exit_code == 0 and all(r["current"] for r in json.loads(status.output))
