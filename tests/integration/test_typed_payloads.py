"""Typed payloads through a topic: pydantic and msgspec models round trip, and a value that
does not deserialize goes to the dead-letter stream as ``deserialization`` with the error
while the records after it flow (threaded and asyncio consumer, default settings)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest

from partitions import (
    AsyncConsumer,
    AsyncProducer,
    ClientConfig,
    Consumer,
    ConsumerConfig,
    JsonSerializer,
    ModelSerializer,
    MsgpackSerializer,
    Producer,
    Record,
    SerializationError,
    TopicAdmin,
    TopicSpec,
    connect_async,
    run,
)
from partitions._admin.deadletter import DeadLetters
from partitions._client.connection import Connection
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Order(pydantic.BaseModel):
    id: int
    item: str
    price: float


class Payment(msgspec.Struct):
    id: int
    amount: int


def drain(c: Consumer, want: int, timeout: float = 15.0) -> list[Record]:
    out: list[Record] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        out += c.poll(timeout=0.2)
    return out


def pending(conn: Connection, topic: str, n: int) -> int:
    return sum(
        conn.client.xpending(conn.keys.stream(layout(conn, topic), p), "g")["pending"]
        for p in range(n)
    )


def send_raw(conn: Connection, topic: str, values: list[Any], partition: int = 0) -> None:
    """Values as a plain producer writes them (dicts as JSON, bytes as given)."""
    with Producer(conn) as p:
        for v in values:
            p.send(topic, v, key="k", partition=partition)


def test_pydantic_models_and_a_poison_value_with_default_settings(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    good = [{"id": i, "item": f"i{i}", "price": i / 2} for i in range(6)]
    # One key, so per-key order is visible: the poison values sit between good ones.
    send_raw(conn, "orders", [good[0], b"{not json", good[1], {"id": 2}, *good[2:]])
    send_raw(conn, "orders", [good[0]], partition=1)
    with Consumer("g", "orders", conn=conn, value_serializer=ModelSerializer(Order)) as c:
        got = drain(c, 7)
        assert c.dead_lettered == 2
    assert [r.value for r in got if r.partition == 0] == [Order(**g) for g in good]
    assert [r.value for r in got if r.partition == 1] == [Order(**good[0])]
    first = next(r for r in got if r.partition == 0)
    assert first.raw_value == b'{"id":0,"item":"i0","price":0.0}'
    letters = DeadLetters(conn).list("orders")
    assert [(d.reason, d.record.value) for d in letters] == [
        ("deserialization", b"{not json"),
        ("deserialization", b'{"id":2}'),
    ]
    assert all(d.error and d.error.startswith("SerializationError: ") for d in letters)
    assert "Invalid JSON" in (letters[0].error or "")
    assert "item" in (letters[1].error or "") and "price" in (letters[1].error or "")
    assert [d.deliveries for d in letters] == [0, 0]  # never handed out
    assert pending(conn, "orders", 2) == 0


def test_msgspec_structs_as_msgpack_and_json_values(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("pay", 1))
    payments = [Payment(id=i, amount=100 * i) for i in range(5)]
    raw = [msgspec.msgpack.encode(p) for p in payments]
    send_raw(conn, "pay", [raw[0], msgspec.msgpack.encode({"id": "x"}), *raw[1:]])
    ser = ModelSerializer(Payment, format="msgpack")
    with Consumer("g", "pay", conn=conn, value_serializer=ser) as c:
        got = drain(c, 5)
    assert [r.value for r in got] == payments
    [d] = DeadLetters(conn).list("pay")
    assert d.reason == "deserialization" and "int" in (d.error or "")


def test_plain_msgpack_and_json_keys(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("docs", 1))
    with Producer(conn) as p:
        p.send("docs", msgspec.msgpack.encode({"a": [1, 2]}), key=b"17")
        p.send("docs", None, key=b"18")  # a tombstone: no value to load
        p.send("docs", b"\xc1", key=b"19")  # not MessagePack
        p.send("docs", msgspec.msgpack.encode("ok"), key=b"not-json")  # the key fails
        p.send("docs", msgspec.msgpack.encode(3), key=b"20")
    kw: dict[str, Any] = {
        "value_serializer": MsgpackSerializer(),
        "key_serializer": JsonSerializer(),
    }
    with Consumer("g", "docs", conn=conn, **kw) as c:
        got = drain(c, 3)
    assert [(r.key, r.value) for r in got] == [(17, {"a": [1, 2]}), (18, None), (20, 3)]
    letters = DeadLetters(conn).list("docs")
    assert [d.record.key for d in letters] == [b"19", b"not-json"]
    assert "MessagePack" in (letters[0].error or "") and "JSON" in (letters[1].error or "")


def test_async_consumer_dead_letters_a_poison_value_and_flows(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    good = [{"id": i, "item": "x", "price": 1.0} for i in range(4)]
    send_raw(conn, "orders", [good[0], good[1], b"\x00garbage", good[2], good[3]])

    async def main() -> list[Record]:
        ser = ModelSerializer(Order)
        async with (
            await connect_async(conn.config) as aconn,
            AsyncConsumer(aconn, "g", "orders", value_serializer=ser) as c,
        ):
            out: list[Record] = []
            end = time.monotonic() + 15
            while len(out) < 4 and time.monotonic() < end:
                out += await c.poll(timeout=0.2)
            assert c.dead_lettered == 1
            return out

    got = asyncio.run(main())
    assert [r.value for r in got] == [Order(**g) for g in good]
    [d] = DeadLetters(conn).list("orders")
    assert (d.reason, d.record.value) == ("deserialization", b"\x00garbage")
    assert d.error and "Invalid JSON" in d.error
    assert pending(conn, "orders", 1) == 0


def test_a_recovered_poison_record_is_dead_lettered_on_takeover(conn: Connection) -> None:
    # The first consumer reads without a serializer and leaves everything unacked; the next
    # owner, with one, recovers the pending records in order and dead-letters the poison one.
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    good = [{"id": i, "item": "x", "price": 1.0} for i in range(3)]
    send_raw(conn, "orders", [good[0], b"nope", good[1], good[2]])

    with Consumer("g", "orders", conn=conn, config=ConsumerConfig(auto_commit=False)) as c:
        assert len(drain(c, 4)) == 4
    assert pending(conn, "orders", 1) == 4
    with Consumer("g", "orders", conn=conn, value_serializer=ModelSerializer(Order)) as c:
        got = drain(c, 3)
    assert [r.value for r in got] == [Order(**g) for g in good]
    [d] = DeadLetters(conn).list("orders")
    # Its one hand-out (to the first consumer) was the unrecorded first one: 0 recorded.
    assert (d.reason, d.record.value, d.deliveries) == ("deserialization", b"nope", 0)
    assert pending(conn, "orders", 1) == 0


def test_the_runner_hands_models_to_the_handler_and_dead_letters_poison(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    good = [{"id": i, "item": "x", "price": 1.0} for i in range(10)]
    send_raw(conn, "orders", [*good[:5], {"id": "five"}, *good[5:]])
    seen: list[Any] = []
    stop = threading.Event()

    def handler(record: Record) -> None:
        seen.append(record.value)
        if len(seen) == len(good):
            stop.set()

    ser = ModelSerializer(Order)
    stats = run(handler, "orders", "g", conn=conn, value_serializer=ser, concurrency=4,
                stop=stop, handle_signals=False)  # fmt: skip
    assert sorted(seen, key=lambda o: o.id) == [Order(**g) for g in good]
    assert (stats.handled, stats.dead_lettered) == (10, 0)  # the poison never reached it
    [d] = DeadLetters(conn).list("orders")
    assert d.reason == "deserialization" and "id" in (d.error or "")
    assert pending(conn, "orders", 2) == 0


def test_producer_and_consumer_share_a_model_serializer(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    orders = [Order(id=i, item=f"i{i}", price=i + 0.5) for i in range(20)]
    ser = ModelSerializer(Order)
    with Producer(conn, value_serializer=ser, key_serializer=JsonSerializer()) as p:
        for o in orders:
            p.send("orders", o, key={"customer": o.id % 3})
        p.send("orders", None, key={"customer": 0})  # a tombstone stays one
    kw: dict[str, Any] = {"value_serializer": ser, "key_serializer": JsonSerializer()}
    with Consumer("g", "orders", conn=conn, **kw) as c:
        got = drain(c, 21)
    assert sorted((r.value for r in got if r.value is not None), key=lambda o: o.id) == orders
    assert {r.key["customer"] for r in got} == {0, 1, 2}
    assert [r.value for r in got if r.value is None] == [None]
    assert DeadLetters(conn).list("orders") == []


def test_a_value_that_does_not_serialize_raises_in_send_before_anything_is_written(
    conn: Connection,
) -> None:
    TopicAdmin(conn).create(TopicSpec("pay", 1))
    stream = conn.keys.stream(layout(conn, "pay"), 0)
    ser = ModelSerializer(Payment, format="msgpack")
    with Producer(conn, value_serializer=ser) as p:
        with pytest.raises(SerializationError, match="Payment"):
            p.send("pay", {"id": "not an int", "amount": object()})
        with pytest.raises(SerializationError):
            p.validate("pay", object())
        assert p.flush(10)
        assert not conn.client.exists(stream) or conn.client.xlen(stream) == 0
        p.send("pay", Payment(id=1, amount=5)).result(10)
    with Consumer(
        "g", "pay", conn=conn, value_serializer=ModelSerializer(Payment, format="msgpack")
    ) as c:
        assert [r.value for r in drain(c, 1)] == [Payment(id=1, amount=5)]


def test_async_producer_serializes_and_refuses_before_queuing(
    conn: Connection, client_config: ClientConfig
) -> None:
    TopicAdmin(conn).create(TopicSpec("docs", 1))

    async def main() -> None:
        aconn = await connect_async(client_config)
        async with aconn, AsyncProducer(aconn, value_serializer=MsgpackSerializer()) as p:
            with pytest.raises(SerializationError):
                await p.send("docs", object())
            await p.send_and_wait("docs", {"a": [1, 2]}, key="k")
            await p.send_and_wait("docs", b"raw bytes", key="k")

    asyncio.run(main())
    with Consumer("g", "docs", conn=conn, value_serializer=MsgpackSerializer()) as c:
        assert [r.value for r in drain(c, 2)] == [{"a": [1, 2]}, b"raw bytes"]
    assert DeadLetters(conn).list("docs") == []


def test_the_readme_example_runs(client_config: ClientConfig, conn: Connection) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Typed payloads", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "PARTSTREAM_URL": client_config.url or "",
           "PARTSTREAM_NAMESPACE": client_config.namespace}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=45, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["b'alice' id=1 item='tea' price=2.5", "b'alice' id=3 item='jam' price=4.0"]
    assert lines[2].startswith("deserialization SerializationError: 1 validation error for Order")
    assert "price" in out.stdout
