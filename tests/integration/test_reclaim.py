""" "Reclaim stuck entries now": an admin request that each partition's owner serves on its next
fenced read (groups.reclaim_now, ``partstream group reclaim``, the dashboard's button)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from partitions._admin.groups import reclaim_now
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection
from partitions._client.nodes import execute_on_key
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main
from partitions.dashboard.app import Dashboard, create_app
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Periodic reclaim far away: only the request can bring the entries back in time.
SLOW_RECLAIM = GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=300,
                             max_deliveries=5, reclaim_idle_ms=600_000)  # fmt: skip
PARTS = 4


def setup(conn: Connection, count: int = 40) -> None:
    TopicAdmin(conn).create(TopicSpec("stuck", PARTS))
    with Producer(conn) as p:
        for i in range(count):
            p.send("stuck", f"v{i}", key=f"k{i % 8}")


def stalled(conn: Connection, want: int) -> tuple[Consumer, list[Record]]:
    """A live consumer that fetched ``want`` records and never acks them."""
    c = Consumer("g", "stuck", conn=conn, config=ConsumerConfig(auto_commit=False),
                 group_settings=SLOW_RECLAIM)  # fmt: skip
    got: list[Record] = []
    end = time.monotonic() + 15
    while len(got) < want and time.monotonic() < end:
        got += c.poll(timeout=0.2)
    assert len(got) == want
    return c, got


def deliveries(conn: Connection) -> dict[str, int]:
    """Delivery count of every pending entry of group g, by id."""
    out: dict[str, int] = {}
    for p in range(PARTS):
        key = conn.keys.stream(layout(conn, "stuck"), p)
        for row in execute_on_key(conn, key, b"XPENDING", key, "g", "-", "+", 1000):
            out[row[0].decode()] = int(row[3])
    return out


def request_fields(conn: Connection) -> list[Any]:
    keys = [conn.keys.stream_groups(layout(conn, "stuck"), p) for p in range(PARTS)]
    return [execute_on_key(conn, k, "HGET", k, "g:reclaim") for k in keys]


def post(app: Any, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    """One POST through the ASGI app (what the page's button sends), no HTTP server."""
    sent: list[dict[str, Any]] = []
    request = [{"type": "http.request", "body": orjson.dumps(payload), "more_body": False}]

    async def receive() -> dict[str, Any]:
        return request.pop(0) if request else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("test", 80),
             "headers": [(b"content-type", b"application/json")]}  # fmt: skip
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(status), orjson.loads(body)


def test_owner_redelivers_stuck_entries_on_its_next_read(conn: Connection) -> None:
    setup(conn)
    c, first = stalled(conn, 40)
    with c:
        assert c.poll(timeout=0.3) == []  # nothing comes back on its own
        assert set(deliveries(conn).values()) == {1}
        time.sleep(0.1)
        # A threshold above the entries' idle time: nothing is stuck, nothing requested.
        none = reclaim_now(conn, "g", min_idle_ms=600_000)
        assert (none.stuck, none.requested) == (0, 0)
        assert c.poll(timeout=0.3) == []

        res = reclaim_now(conn, "g", min_idle_ms=50)
        assert res.stuck == 40 and res.requested == PARTS
        assert sum(p.stuck for p in res.partitions) == 40 and all(
            p.requested for p in res.partitions
        )
        t0 = time.monotonic()
        again: list[Record] = []
        while len(again) < 40 and time.monotonic() - t0 < 5:
            again += c.poll(timeout=0.2)
        assert time.monotonic() - t0 < 2  # promptly: the next reads, not reclaim_idle_ms
        assert sorted(r.id for r in again) == sorted(r.id for r in first)
        for p in range(PARTS):  # in id order per partition
            ids = [tuple(map(int, r.id.split("-"))) for r in again if r.partition == p]
            assert ids == sorted(ids)
        assert set(deliveries(conn).values()) == {2}  # the delivery count rose
        assert c.reclaimed == 40  # consume.lua's reply counted them
        assert request_fields(conn) == [None] * PARTS  # served once, then cleared
        c.commit()
        assert deliveries(conn) == {}


def test_cli_and_dashboard_request_a_reclaim(client_config: ClientConfig, conn: Connection) -> None:
    setup(conn, 12)
    c, _ = stalled(conn, 12)
    with c:
        time.sleep(0.1)
        base = ["--url", client_config.url or "", "--namespace", client_config.namespace]
        out = CliRunner().invoke(
            main, [*base, "group", "reclaim", "g", "--min-idle-ms", "50", "--format", "json"]
        )
        assert out.exit_code == 0, out.output
        data = orjson.loads(out.output)
        assert data["stuck"] == 12 and data["requested"] >= 1
        again: list[Record] = []
        end = time.monotonic() + 5
        while len(again) < 12 and time.monotonic() < end:
            again += c.poll(timeout=0.2)
        assert len(again) == 12

        dash = Dashboard(conn, "stuck", None)
        try:
            time.sleep(0.1)
            app = create_app(dash)
            status, body = post(app, "/api/groups/g/reclaim", {"min_idle_ms": 50})
            assert status == 200, body
            assert body["stuck"] == 12
            status, body = post(app, "/api/groups/g/reclaim", {"min_idle_ms": -1})
            assert status == 400 and "min_idle_ms" in body["error"]
        finally:
            dash.close()
        again = []
        end = time.monotonic() + 5
        while len(again) < 12 and time.monotonic() < end:
            again += c.poll(timeout=0.2)
        assert len(again) == 12
        assert set(deliveries(conn).values()) == {3}
        c.commit()
