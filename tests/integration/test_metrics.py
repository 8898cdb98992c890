"""The Prometheus exporter and ``group lag`` on a real server: while a group is behind, the
exporter's lag, lag seconds and pending match ``group describe``; after it drains they read 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.connection
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from partitions._admin.groups import describe_with_lag
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.functions import library_name
from partitions._base.records import id_timestamp
from partitions._base.replies import time_ms_from_reply
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection
from partitions._client.nodes import primaries
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions._telemetry.exporter import MetricsExporter
from partitions._telemetry.scrape import Scraper
from partitions.cli import main
from tests import helpers
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

README = Path(__file__).resolve().parents[2] / "README.md"
FAST = helpers.FAST.with_changes(session_timeout_ms=3000, heartbeat_interval_ms=300,
                                 max_deliveries=3, reclaim_idle_ms=60_000)  # fmt: skip
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as res:
        return str(res.read().decode())


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(got: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        lab: v
        for (n, lab), v in got.items()
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items())
    }


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def server_ms(conn: Connection) -> int:
    return time_ms_from_reply(conn.client.time())


def run(cfg: ClientConfig, *args: str) -> tuple[int, str, str]:
    assert cfg.url is not None
    result = CliRunner().invoke(main, ["--url", cfg.url, "--namespace", cfg.namespace, *args])
    return result.exit_code, result.stdout, result.stderr


def wait_stable(conn: Connection, group: str, members: int) -> None:
    from partitions._admin.groups import GroupAdmin

    end = time.monotonic() + 20
    while time.monotonic() < end:
        d = GroupAdmin(conn).describe(group)
        if d.state == "stable" and len(d.members) == members:
            return
        time.sleep(0.1)
    raise AssertionError(f"group {group} never became stable with {members} member(s)")


def test_exporter_matches_describe_while_behind_and_reads_zero_after_draining(
    conn: Connection, client_config: ClientConfig
) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 4))
    TopicAdmin(conn).create(TopicSpec("quiet", 2))  # never written: no stream yet
    with Producer(conn) as p:
        for i in range(200):
            p.send("orders", {"i": i}, key=f"k{i % 13}")
    time.sleep(0.05)  # so the oldest unacked entries are measurably old
    c = Consumer("billing", "orders", conn=conn, group_settings=FAST,
                 config=ConsumerConfig(auto_commit=False, fetch_count=10))  # fmt: skip
    exporter = MetricsExporter(conn, port=0, interval=30)  # scraped by hand below
    try:
        got: list = []  # type: ignore[type-arg]
        end = time.monotonic() + 15
        while len(got) < 30 and time.monotonic() < end:
            got += c.poll(max_records=30 - len(got), timeout=0.3)
        assert len(got) == 30
        c.commit(got[:10])
        c.dead_letter(got[10], reason="bad-schema")
        wait_stable(conn, "billing", 1)

        with exporter:
            before = server_ms(conn)
            assert exporter.scrape_once() is not None
            after = server_ms(conn)
            text = _get(exporter.url)
            scrapes = exporter.scrapes
            assert _get(exporter.url) and _get(exporter.url)
            assert exporter.scrapes == scrapes  # served from the last scrape: no Redis reads
        desc = describe_with_lag(conn, "billing").to_dict()
        m = samples(text)
        assert value(m, "partstream_up") == 1
        assert value(m, "partstream_consumergroup_members", group="billing") == 1
        assert value(m, "partstream_consumergroup_epoch", group="billing") == desc["epoch"]
        assert desc["total_lag"] > 0 and sum(p["pending"] for p in desc["partitions"]) > 0
        for row in desc["partitions"]:
            labels = {"group": "billing", "topic": "orders", "partition": str(row["partition"])}
            assert value(m, "partstream_consumergroup_lag", **labels) == row["lag"]
            assert value(m, "partstream_consumergroup_pending", **labels) == row["pending"]
            age = value(m, "partstream_consumergroup_lag_seconds", **labels)
            if row["lag"] == 0:
                assert age == 0 and row["oldest_unacked_id"] is None
                continue
            # the age of the entry describe names as the oldest unacked one, at scrape time
            born = id_timestamp(row["oldest_unacked_id"])
            assert (before - born) / 1000 <= age <= (after - born) / 1000, (row, age)
            assert age > 0
        assert (
            value(m, "partstream_consumergroup_lag_sum", group="billing", topic="orders")
            == (desc["total_lag"])
        )
        # topic series, against what the server says directly
        for p in range(4):
            stream = conn.keys.stream(layout(conn, "orders"), p)
            labels = {"topic": "orders", "partition": str(p)}
            first = conn.client.xrange(stream, count=1)[0][0].decode()
            last = conn.client.xrevrange(stream, count=1)[0][0].decode()
            assert value(m, "partstream_topic_partition_length", **labels) == conn.client.xlen(
                stream
            )
            assert value(m, "partstream_topic_partition_first_timestamp_seconds", **labels) == (
                id_timestamp(first) / 1000
            )
            assert value(m, "partstream_topic_partition_last_timestamp_seconds", **labels) == (
                id_timestamp(last) / 1000
            )
        added = series(m, "partstream_topic_partition_current_offset", topic="orders")
        assert sum(added.values()) == 200
        assert value(m, "partstream_topic_partitions", topic="quiet") == 2
        assert value(m, "partstream_topic_partition_length", topic="quiet", partition="0") == 0
        assert not series(m, "partstream_topic_partition_first_timestamp_seconds", topic="quiet")
        dead = series(m, "partstream_deadletter_entries", topic="orders")
        origin = str(got[10].partition)
        assert dead == {
            (("group", "billing"), ("partition", origin), ("reason", "bad-schema"),
             ("topic", "orders")): 1.0
        }  # fmt: skip

        # group lag: over a bound exits 3 (JSON says why), within bounds exits 0
        code, out, err = run(client_config, "group", "lag", "billing", "--max-lag", "5",
                             "--format", "json")  # fmt: skip
        assert code == 3, err
        body = orjson.loads(out)
        assert body["ok"] is False and body["total_lag"] == desc["total_lag"]
        assert body["violations"] and body["max_lag_seconds"] > 0
        code, out, err = run(client_config, "group", "lag", "billing", "--max-lag", "100000",
                             "--max-lag-seconds", "3600", "--format", "json")  # fmt: skip
        assert code == 0, err
        assert orjson.loads(out)["ok"] is True
        code, _, err = run(client_config, "group", "lag", "billing", "--max-lag-seconds", "0.001")
        assert code == 3, err
        code, _, err = run(client_config, "group", "lag", "nobody", "--max-lag", "5")
        assert code == 1 and "UnknownGroupError" in err
        code, _, err = run(client_config, "group", "lag", "billing", "--max-lag", "-1")
        assert code == 2, err

        # drain the rest: every lag series reads 0
        c.commit(got[11:])
        end = time.monotonic() + 20
        while time.monotonic() < end:
            batch = c.poll(max_records=100, timeout=0.2)
            c.commit(batch)
            if not batch and describe_with_lag(conn, "billing").lag.total_lag == 0:
                break
        with exporter:
            assert exporter.scrape_once() is not None
            m = samples(_get(exporter.url))
        for name in ("lag", "lag_seconds", "pending"):
            values = series(m, f"partstream_consumergroup_{name}", group="billing")
            assert len(values) == 4 and set(values.values()) == {0.0}, (name, values)
        code, out, err = run(client_config, "group", "lag", "billing", "--max-lag", "0",
                             "--max-lag-seconds", "0")  # fmt: skip
        assert code == 0, (out, err)
    finally:
        c.close()


def test_readme_metrics_examples_name_metrics_the_exporter_serves(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    with Producer(conn) as p:
        p.send("orders", b"x", key="a")
    with Consumer("billing", "orders", conn=conn, group_settings=FAST) as c:
        end, got = time.monotonic() + 10, []
        while not got and time.monotonic() < end:
            got = c.poll(timeout=0.2)
        c.dead_letter(got[0], reason="bad-schema")
    exporter = MetricsExporter(conn, port=0, interval=30)
    with exporter:
        served = {name for name, _ in samples(_get(exporter.url))}
    # The exporter's part of the section (the client metrics and tracing follow it).
    section = README.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### Client metrics", 1)[0]
    named = set(re.findall(r"\bpartstream_[a-z_]+\b", section))
    assert "partstream_consumergroup_lag_seconds" in named
    assert named <= served, named - served


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_serve_command_serves_until_sigterm(client_config: ClientConfig) -> None:
    assert client_config.url is not None
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "partitions", "--url", client_config.url, "--namespace",
         client_config.namespace, "metrics", "serve", "--port", str(port), "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        text, end = "", time.monotonic() + 30
        while time.monotonic() < end:
            try:
                text = _get(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                time.sleep(0.2)
        assert value(samples(text), "partstream_up") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""


def test_exporter_counts_lag_where_the_server_lag_is_null_and_reloads_the_library(
    conn: Connection,
) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    with Producer(conn) as p:
        for i in range(30):
            p.send("orders", f"v{i}", key=f"k{i % 5}")
    c = Consumer("g", "orders", conn=conn, group_settings=FAST,
                 config=ConsumerConfig(auto_commit=False, fetch_count=10))  # fmt: skip
    try:
        got: list = []  # type: ignore[type-arg]
        end = time.monotonic() + 10
        while len(got) < 10 and time.monotonic() < end:
            got += c.poll(max_records=10 - len(got), timeout=0.3)
        c.commit(got[:4])
        stream = conn.keys.stream(layout(conn, "orders"), 0)
        conn.client.xdel(stream, got[5].id)  # a deletion, then SETID: the server's lag is NULL
        conn.client.execute_command("XGROUP", "SETID", stream, "g", got[-1].id)
        assert conn.client.xinfo_groups(stream)[0]["lag"] is None
        for node in primaries(conn):  # as after a restart without persistence: loaded again
            with contextlib.suppress(redis.ResponseError):
                node.execute_command("FUNCTION", "DELETE", library_name())
        with MetricsExporter(conn, port=0, interval=30) as exporter:
            m = samples(_get(exporter.url))
        [row] = describe_with_lag(conn, "g").to_dict()["partitions"]
        labels = {"group": "g", "topic": "orders", "partition": "0"}
        assert value(m, "partstream_consumergroup_lag", **labels) == row["lag"] == 20 + 6
        # XDEL leaves got[5] in the pending list: 6 pending
        assert value(m, "partstream_consumergroup_pending", **labels) == row["pending"] == 6
        assert row["oldest_unacked_id"] == got[4].id
        assert value(m, "partstream_consumergroup_lag_seconds", **labels) > 0
        assert not series(m, "partstream_consumergroup_current_offset", group="g")
    finally:
        c.close()


@contextlib.contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count, per server address, the writes to the socket: one per command sent alone, one
    per pipeline (redis-py writes a pipeline's commands at once, then reads the replies)."""
    sent: Counter[str] = Counter()
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        where = getattr(self, "path", None) or f"{self.host}:{self.port}"
        sent[str(where)] += 1
        real(self, command, check_health)

    with monkeypatch.context() as m:
        m.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        yield sent


def test_a_scrape_is_one_pipelined_round_per_node(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 6))
    with Producer(conn) as p:
        for i in range(120):
            p.send("orders", {"i": i}, key=f"k{i % 17}")
    c = Consumer("billing", "orders", conn=conn, group_settings=FAST,
                 config=ConsumerConfig(auto_commit=False, fetch_count=10))  # fmt: skip
    try:
        got: list = []  # type: ignore[type-arg]
        end = time.monotonic() + 15
        while len(got) < 20 and time.monotonic() < end:
            got += c.poll(max_records=20 - len(got), timeout=0.3)
        c.commit(got[:5])
        c.dead_letter(got[5], reason="bad-schema")
        wait_stable(conn, "billing", 1)
        # Every case a scrape handles: a NULL server lag (a seek) on one partition too.
        stream = conn.keys.stream(layout(conn, "orders"), got[0].partition)
        conn.client.xdel(stream, got[0].id)
        conn.client.execute_command("XGROUP", "SETID", stream, "billing", got[0].id)
        scraper = Scraper(conn)
        cold = scraper.scrape()
        assert scraper.rounds == 3  # names, then metadata, then partitions
        with round_trips(monkeypatch) as sent:
            warm = scraper.scrape()
        assert scraper.rounds == 1
        assert sent and max(sent.values()) == 1, sent  # one round trip per node
        kwargs = [n.connection_pool.connection_kwargs for n in primaries(conn)]
        nodes = {str(k.get("path") or f"{k.get('host')}:{k.get('port')}") for k in kwargs}
        assert set(sent) <= nodes, (sent, nodes)  # ...and only to primaries
        # ...reading what a scrape from scratch reads (lag_ms aside: the clock moves).
        assert warm.partitions == cold.partitions and warm.dead_letters == cold.dead_letters
        assert [replace(o, lag_ms=0) for g in warm.groups for o in g.offsets] == [
            replace(o, lag_ms=0) for g in cold.groups for o in g.offsets
        ]
        [g] = warm.groups
        assert (
            sum(o.lag for o in g.offsets)
            == describe_with_lag(conn, "billing").to_dict()["total_lag"]
        )
        assert any(not o.exact or o.entries_read is None for o in g.offsets)  # the NULL lag
        assert {d.reason for d in warm.dead_letters} == {"bad-schema"}
        # A new topic costs the scrape after it more rounds, for that topic only.
        TopicAdmin(conn).create(TopicSpec("audit", 2))
        assert len(scraper.scrape().partitions) == 8 and scraper.rounds == 3
        with round_trips(monkeypatch) as sent:
            scraper.scrape()
        assert scraper.rounds == 1 and max(sent.values()) == 1
    finally:
        c.close()
