"""Dead letters carry the error beside the reason: Consumer/AsyncConsumer.dead_letter(...,
error=), bounded to 1 KiB with a marker, read back as DeadLetter.error and shown by
``partstream dlq list``; the reason stays a short label; old entries (no error) still parse."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from click.testing import CliRunner

from partitions import AsyncConsumer, Consumer, GroupSettings, connect_async
from partitions._admin.deadletter import DeadLetters
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import ConfigError
from partitions._base.records import Record
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection
from partitions._consumer.calls import MAX_ERROR_BYTES, TRUNCATED
from partitions._producer.producer import Producer
from partitions.cli import main
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200, max_deliveries=3,
                     reclaim_idle_ms=60_000)  # fmt: skip


def setup(conn: Connection, n: int = 3) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    with Producer(conn) as p:
        for i in range(n):
            p.send("orders", f"v{i}", key=f"k{i}")


def drain(c: Consumer, want: int) -> list[Record]:
    out: list[Record] = []
    end = time.monotonic() + 10
    while len(out) < want and time.monotonic() < end:
        out += c.poll(timeout=0.2)
    return out


def test_dead_letter_keeps_the_error_and_bounds_it(
    conn: Connection, client_config: ClientConfig
) -> None:
    setup(conn)
    huge = "ValueError: " + "é" * 2000  # two bytes each: cut on a character boundary
    with Consumer("g", "orders", conn=conn, group_settings=FAST) as c:
        got = drain(c, 3)
        c.dead_letter(got[0], "bad-schema", error="KeyError: 'price'")
        c.dead_letter(got[1], "bad-schema", error=huge)
        c.dead_letter(got[2], "rejected")  # no error: as before
        assert c.dead_lettered == 3
    letters = DeadLetters(conn).list("orders")
    assert [d.original_id for d in letters] == [r.id for r in got]
    first, second, third = letters
    assert (first.reason, first.error) == ("bad-schema", "KeyError: 'price'")
    assert first.record.value == b"v0" and first.record.key == b"k0"
    assert second.error is not None and second.error.endswith(TRUNCATED.decode())
    assert len(second.error.encode()) <= MAX_ERROR_BYTES
    assert huge.startswith(second.error[: -len(TRUNCATED)])
    assert (third.reason, third.error) == ("rejected", None)
    assert second.record.value == b"v1"  # the original fields follow the error intact

    result = CliRunner().invoke(
        main, ["--url", client_config.url or "", "--namespace", client_config.namespace,
               "dlq", "list", "orders"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "error KeyError: 'price'" in lines[0] and "error" not in lines[2]
    result = CliRunner().invoke(
        main, ["--url", client_config.url or "", "--namespace", client_config.namespace,
               "dlq", "list", "orders", "--format", "json"],
    )  # fmt: skip
    rows = orjson.loads(result.stdout)
    assert [r["error"] for r in rows][::2] == ["KeyError: 'price'", None]


def test_a_reason_must_be_a_label_and_nothing_is_written(conn: Connection) -> None:
    setup(conn, n=1)
    with Consumer("g", "orders", conn=conn, group_settings=FAST) as c:
        [rec] = drain(c, 1)
        with pytest.raises(ConfigError, match="error="):
            c.dead_letter(rec, "price is missing in this order")
        with pytest.raises(ConfigError):
            c.dead_letter(rec, "")
        assert DeadLetters(conn).list("orders") == []
        c.dead_letter(rec, "bad-schema", error="price is missing in this order")
    [d] = DeadLetters(conn).list("orders")
    assert (d.reason, d.error) == ("bad-schema", "price is missing in this order")


def test_an_entry_without_the_error_field_still_parses(conn: Connection) -> None:
    # A dead letter as consume.lua wrote it before errors were kept.
    setup(conn, n=0)
    key = conn.keys.dlq(layout(conn, "orders"), 0)
    conn.client.xadd(key, {"dlq.topic": "orders", "dlq.partition": "0", "dlq.id": "5-0",
                           "dlq.group": "g", "dlq.deliveries": "2", "dlq.reason": "max_deliveries",
                           "key": "k", "value": "v"})  # fmt: skip
    [d] = DeadLetters(conn).list("orders")
    assert (d.reason, d.error, d.problems, d.record.value) == ("max_deliveries", None, (), b"v")


def test_async_consumer_dead_letter_with_error(conn: Connection) -> None:
    setup(conn, n=2)

    async def run() -> list[Record]:
        async with (
            await connect_async(conn.config) as aconn,
            AsyncConsumer(aconn, "g", "orders", group_settings=FAST) as c,
        ):
            got: list[Record] = []
            end = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < end:
                got += await c.poll(timeout=0.2)
            await c.dead_letter(got[1], "handler_error", error="RuntimeError: boom")
            with pytest.raises(ConfigError):
                await c.dead_letter(got[0], "not a label")
            return got

    got = asyncio.run(run())
    [d] = DeadLetters(conn).list("orders")
    assert (d.original_id, d.reason, d.error) == (got[1].id, "handler_error", "RuntimeError: boom")
