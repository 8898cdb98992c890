"""The consumer-side CLI (consume, group, dlq) through click's CliRunner, on a real server."""

from __future__ import annotations

import signal
import time

import orjson
import pytest
from click.testing import CliRunner

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(cfg: ClientConfig, *args: str) -> tuple[int, str, str]:
    assert cfg.url is not None
    result = CliRunner().invoke(main, ["--url", cfg.url, "--namespace", cfg.namespace, *args])
    return result.exit_code, result.stdout, result.stderr


def setup(conn: Connection, n: int = 20, parts: int = 2) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", parts))
    with Producer(conn) as p:
        for i in range(n):
            p.send("orders", {"seq": i}, key=f"k{i % 5}", headers={"h": "x"})


FAST = ("--session-timeout-ms", "1000", "--heartbeat-ms", "200")


def test_consume_prints_json_lines_and_commits_each(
    client_config: ClientConfig, conn: Connection
) -> None:
    setup(conn)
    code, out, err = run(client_config, "consume", "orders", "-g", "g", "-n", "5", *FAST)
    assert code == 0, err
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert len(rows) == 5
    assert set(rows[0]) == {"topic", "partition", "id", "key", "value", "headers", "timestamp"}
    assert rows[0]["headers"] == {"h": "x"} and "seq" in rows[0]["value"]
    code, out, err = run(client_config, "group", "describe", "g", "--format", "json")
    assert code == 0, err
    d = orjson.loads(out)
    assert d["total_lag"] == 15
    assert d["settings"]["session_timeout_ms"] == 1000
    assert len(d["partitions"]) == 2
    for p in d["partitions"]:
        assert {"last_delivered_id", "lag", "pending"} <= set(p)
    # fetched but never printed: still pending, so still lag (redelivered to the next member)
    assert sum(p["pending"] for p in d["partitions"]) == 15
    # the rest, then an idle exit thanks to --timeout
    code, out, err = run(client_config, "consume", "orders", "-g", "g", "--timeout", "0.5")
    assert code == 0, err
    rest = [orjson.loads(line) for line in out.splitlines()]
    assert len(rest) == 15
    printed = {(r["partition"], r["id"]) for r in rows}
    assert not {(r["partition"], r["id"]) for r in rest} & printed  # those were committed
    code, out, _ = run(client_config, "group", "describe", "g", "--format", "json")
    assert orjson.loads(out)["total_lag"] == 0


def test_consume_restores_the_sigterm_handler_after_it_runs_and_when_it_fails(
    client_config: ClientConfig, conn: Connection
) -> None:
    setup(conn, n=2)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run(client_config, "consume", "orders", "-g", "g", "-n", "2", *FAST)
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) == before
    code, _, err = run(client_config, "consume", "no-such-topic", "-g", "g", *FAST)
    assert code != 0 and "no-such-topic" in err  # the consumer could not be made
    assert signal.getsignal(signal.SIGTERM) == before


def test_group_seek_is_a_dry_run_without_execute(
    client_config: ClientConfig, conn: Connection
) -> None:
    setup(conn)
    assert run(client_config, "consume", "orders", "-g", "g", "-n", "20", *FAST)[0] == 0
    code, out, err = run(
        client_config, "group", "seek", "g", "--to", "earliest", "--format", "json"
    )
    assert code == 0, err
    plan = orjson.loads(out)
    assert plan["executed"] is False and [s["new"] for s in plan["partitions"]] == ["0", "0"]
    _, out, _ = run(client_config, "group", "describe", "g", "--format", "json")
    assert orjson.loads(out)["total_lag"] == 0
    code, out, err = run(client_config, "group", "seek", "g", "--to", "earliest", "--execute")
    assert code == 0, err
    assert out.startswith("executed")
    _, out, _ = run(client_config, "group", "describe", "g", "--format", "json")
    assert orjson.loads(out)["total_lag"] == 20
    code, out, err = run(client_config, "group", "seek", "g", "--to", "bogus")
    assert code != 0 and "bogus" in err


def test_group_admin_commands(client_config: ClientConfig, conn: Connection) -> None:
    code, _, err = run(client_config, "group", "create", "g1", "--max-deliveries", "7")
    assert code == 0, err
    code, out, _ = run(client_config, "group", "list", "--format", "json")
    assert orjson.loads(out) == ["g1"]
    code, out, err = run(
        client_config, "group", "alter", "g1", "--reclaim-idle-ms", "5000", "--format", "json"
    )
    assert code == 0, err
    s = orjson.loads(out)["settings"]
    assert (s["max_deliveries"], s["reclaim_idle_ms"]) == (7, 5000)
    code, _, err = run(client_config, "group", "create", "g1")
    assert code == 1 and "already exists" in err
    assert run(client_config, "group", "delete", "g1")[0] == 0
    _, out, _ = run(client_config, "group", "list", "--format", "json")
    assert orjson.loads(out) == []


def test_dlq_list_and_replay(client_config: ClientConfig, conn: Connection) -> None:
    setup(conn, n=3, parts=1)
    with Consumer("g", "orders", conn=conn) as c:
        got: list = []
        end = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < end:
            got += c.poll(timeout=0.2)
        c.dead_letter(got[1], reason="bad")
    code, out, err = run(client_config, "dlq", "list", "orders", "--format", "json")
    assert code == 0, err
    [row] = orjson.loads(out)
    assert (row["id"], row["group"], row["reason"], row["partition"]) == (got[1].id, "g", "bad", 0)
    assert row["value"] == {"seq": 1}
    code, out, err = run(client_config, "dlq", "replay", "orders")
    assert code == 0 and "replayed 1" in out, err
    _, out, _ = run(client_config, "dlq", "list", "orders", "--format", "json")
    assert orjson.loads(out) == []
    assert conn.client.xlen(conn.keys.stream(layout(conn, "orders"), 0)) == 4
