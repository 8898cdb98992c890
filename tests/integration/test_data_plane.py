"""Topics, producer and replay against a real server."""

from __future__ import annotations

import threading
import time

import pytest

from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import (
    BufferFullError,
    ConfigError,
    RecordTooLargeError,
    SequenceLostError,
    TopicExistsError,
    UnknownTopicError,
    WrongTypeError,
)
from partitions._client.config import ProducerConfig
from partitions._client.connection import Connection
from partitions._client.nodes import node_for_key
from partitions._producer.producer import Producer
from tests.helpers import layout


def test_topic_lifecycle(conn: Connection) -> None:
    admin = TopicAdmin(conn)
    meta = admin.create(TopicSpec("orders", 4, max_length=1000, regions={"eu": (0, 1)}))
    assert meta.partitions == 4 and meta.version == 1 and meta.created_ms > 0
    with pytest.raises(TopicExistsError):
        admin.create(TopicSpec("orders", 4))
    assert admin.names() == ["orders"]
    grown = admin.alter("orders", partitions=6, retention_ms=60_000)
    assert (grown.partitions, grown.spec.retention_ms, grown.spec.max_length) == (6, 60_000, 1000)
    assert grown.version == 2
    with pytest.raises(ConfigError, match="cannot shrink"):
        admin.alter("orders", partitions=2)
    assert admin.delete("orders") is True
    assert admin.delete("orders") is False
    with pytest.raises(UnknownTopicError):
        admin.get("orders")


def test_wrongtype_key_is_refused_before_any_write(conn: Connection) -> None:
    conn.client.set(conn.keys.stream(layout(conn, "clash", 2), 1), "not a stream")
    with pytest.raises(WrongTypeError, match="holds a string"):
        TopicAdmin(conn).create(TopicSpec("clash", 2))
    assert not conn.client.exists(conn.keys.topic_meta("clash"))


def test_produce_keyed_order_headers_and_values(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("t", 4))
    with Producer(conn, ProducerConfig(linger_ms=1)) as p:
        futs = [p.send("t", {"n": i}, key=f"k{i % 7}", headers={"src": "test"}) for i in range(700)]
        raw = p.send("t", b"\x00\xffbin", key=b"bin")
        tomb = p.send("t", None, key="gone")
    metas = [f.result(5) for f in futs]
    # same key -> same partition, increasing ids (append order)
    by_key: dict[str, list[tuple[int, str]]] = {}
    for i, m in enumerate(metas):
        by_key.setdefault(f"k{i % 7}", []).append((m.partition, m.id))
    for seq in by_key.values():
        assert len({part for part, _ in seq}) == 1
        ids = [tuple(map(int, i.split("-"))) for _, i in seq]
        assert ids == sorted(ids)
    records = list(replay(conn, "t"))
    assert len(records) == 702
    # ids are per partition: two partitions may hold the same id
    got = {(r.partition, r.id): r for r in records}
    first = got[metas[0].partition, metas[0].id]
    assert first.json() == {"n": 0} and first.key == b"k0" and first.headers == {"src": b"test"}
    assert got[raw.result().partition, raw.result().id].value == b"\x00\xffbin"
    assert got[tomb.result().partition, tomb.result().id].value is None
    # keyless records of one batch stick to one partition (a long linger keeps them in one)
    with Producer(conn, ProducerConfig(linger_ms=10_000)) as p:
        keyless = [p.send("t", f"free-{i}") for i in range(10)]
        p.flush()
    assert len({f.result().partition for f in keyless}) == 1


def test_explicit_partition_and_region(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("r", 8, regions={"eu": (0, 3), "us": (4, 7)}))
    with Producer(conn) as p:
        assert p.send("r", "x", key="a", partition=6).result(5).partition == 6
        for i in range(50):
            assert 4 <= p.send("r", "x", key=f"u{i}", region="us").result(5).partition <= 7
        with pytest.raises(ConfigError):
            p.send("r", "x", partition=8)
        with pytest.raises(ConfigError, match="unknown region"):
            p.send("r", "x", key="a", region="apac")
        with pytest.raises(UnknownTopicError):
            p.send("nope", "x")


def test_oversize_record_is_refused_before_writing(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("big", 1))
    with (
        Producer(conn, ProducerConfig(max_record_bytes=1000)) as p,
        pytest.raises(RecordTooLargeError),
    ):
        p.send("big", b"x" * 2000, key="k")
    assert conn.client.xlen(conn.keys.stream(layout(conn, "big"), 0)) == 0


def test_send_from_many_threads(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("mt", 8))
    per_thread = 2000
    with Producer(conn, ProducerConfig(batch_size=100)) as p:

        def work(t: int) -> None:
            for i in range(per_thread):
                p.send("mt", f"{t}:{i}", key=f"thread-{t}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert p.flush(30)
    seen: dict[str, list[int]] = {}
    for r in replay(conn, "mt"):
        t, i = r.value.decode().split(":")  # type: ignore[union-attr]
        seen.setdefault(t, []).append(int(i))
    assert {t: len(v) for t, v in seen.items()} == {str(t): per_thread for t in range(4)}
    for v in seen.values():
        assert v == list(range(per_thread))  # per-key order kept across threads


def test_retention_by_length_and_age(conn: Connection) -> None:
    admin = TopicAdmin(conn)
    admin.create(TopicSpec("ret", 1, max_length=500))
    with Producer(conn, ProducerConfig(batch_size=200)) as p:
        for i in range(5000):
            p.send("ret", str(i), key="k")
    length = conn.client.xlen(conn.keys.stream(layout(conn, "ret"), 0))
    assert 500 <= length < 5000  # approximate trim: whole nodes
    admin.alter("ret", max_length=None, retention_ms=1)
    time.sleep(0.01)
    with Producer(conn, ProducerConfig(batch_size=200)) as p:
        for i in range(300):
            p.send("ret", str(i), key="k")
    # age retention drops what is older than 1 ms, node by node
    assert conn.client.xlen(conn.keys.stream(layout(conn, "ret"), 0)) < length + 300


def test_idempotent_retry_is_not_duplicated(conn: Connection) -> None:
    """Re-sending the very same batch (as after a lost reply) appends nothing."""
    TopicAdmin(conn).create(TopicSpec("idem", 1))
    key = conn.keys.stream(layout(conn, "idem"), 0)
    seq = conn.keys.seq(layout(conn, "idem"), 0)
    groups = conn.keys.stream_groups(layout(conn, "idem"), 0)
    args = ["pid1", 1, 0, 0, 0, 2, 0, b"k", b"a", 0, b"k", b"b"]
    first = conn.functions.call("append", [key, seq, groups], args)
    again = conn.functions.call("append", [key, seq, groups], args)
    assert first[0] == 1 and again[0] == 2
    assert first[1:] == again[1:]  # the retry learns the original ids
    assert conn.client.xlen(key) == 2
    with pytest.raises(Exception, match="OUTOFSEQ"):
        conn.functions.call("append", [key, seq, groups], ["pid1", 3, 0, 0, 0, 1, 0, b"k", b"c"])
    assert conn.client.xlen(key) == 2


def test_back_pressure_blocks_then_raises(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("bp", 1))
    cfg = ProducerConfig(batch_size=10, buffer_records=10, block_timeout=0.3, linger_ms=0)
    # On a cluster, pause the node that serves the partition (CLIENT PAUSE is per node).
    node = node_for_key(conn, conn.keys.stream(layout(conn, "bp"), 0))
    with Producer(conn, cfg) as p:
        node.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        try:
            start = time.monotonic()
            with pytest.raises(BufferFullError):
                for i in range(1000):
                    p.send("bp", str(i), key="k")
            assert time.monotonic() - start >= 0.25
        finally:
            node.execute_command("CLIENT", "UNPAUSE")
    assert (
        conn.client.xlen(conn.keys.stream(layout(conn, "bp"), 0)) >= 10
    )  # nothing accepted was dropped


def test_replay_positions_count_end_and_follow(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("rp", 3))
    with Producer(conn) as p:
        metas = [p.send("rp", str(i), key=f"k{i}").result(5) for i in range(30)]
    ids = [m.id for m in metas]
    all_records = list(replay(conn, "rp"))
    assert [r.id for r in all_records] == sorted(ids, key=lambda s: tuple(map(int, s.split("-"))))
    assert len(list(replay(conn, "rp", count=5))) == 5
    assert list(replay(conn, "rp", start="latest")) == []
    part = metas[10].partition
    from_id = [r.id for r in replay(conn, "rp", partitions=[part], start=metas[10].id)]
    assert from_id[0] == metas[10].id
    ts = int(ids[0].split("-")[0])
    assert len(list(replay(conn, "rp", start=f"@{ts}"))) == 30
    assert len(list(replay(conn, "rp", start="@9999999999999"))) == 0
    until = list(replay(conn, "rp", end=all_records[9].id))
    assert len(until) == 10

    stop = threading.Event()
    got: list[str] = []

    def follower() -> None:
        for r in replay(conn, "rp", start="latest", follow=True, block_ms=100, stop=stop, count=3):
            got.append(r.value.decode())  # type: ignore[union-attr]

    th = threading.Thread(target=follower)
    th.start()
    time.sleep(0.3)
    with Producer(conn) as p:
        for i in range(3):
            p.send("rp", f"new{i}", key="n")
    th.join(5)
    stop.set()
    assert got == ["new0", "new1", "new2"]


def test_lost_sequence_state_fails_one_batch_loudly_then_recovers(conn: Connection) -> None:
    """The server forgot this producer's sequence (crash lost its last writes): the next batch
    fails, is not appended, and the producer goes on under a new identity."""
    TopicAdmin(conn).create(TopicSpec("seq", 1))
    with Producer(conn, ProducerConfig(linger_ms=0)) as p:
        p.send("seq", "a", key="k").result(5)
        p.send("seq", "b", key="k").result(5)
        conn.client.delete(conn.keys.seq(layout(conn, "seq"), 0))
        lost = p.send("seq", "c", key="k")
        with pytest.raises(SequenceLostError, match="OUTOFSEQ"):
            lost.result(5)
        assert p.send("seq", "d", key="k").result(5).partition == 0
    assert [r.value for r in replay(conn, "seq")] == [b"a", b"b", b"d"]


def test_send_many_queues_in_parts_and_checks_everything_first(conn: Connection) -> None:
    """``Producer.send_many``: every record checked before any is queued; a list longer
    than the buffer goes in parts that fit it (the call waits for room like send()); per-key
    order and one future per record, resolved to where each one went."""
    TopicAdmin(conn).create(TopicSpec("many", 4))
    cfg = ProducerConfig(linger_ms=2, batch_size=50, buffer_records=300)
    with Producer(conn, cfg) as p:
        bad = [(f"k{i % 5}:{i}", f"k{i % 5}") for i in range(100)]
        bad[60] = ("x" * (cfg.max_record_bytes + 1), "k0")
        with pytest.raises(RecordTooLargeError):
            p.send_many("many", bad)
        futures = p.send_many("many", [(f"k{i % 5}:{i}", f"k{i % 5}") for i in range(3000)])
        assert p.flush(30)
        metas = [f.result(0) for f in futures]
        assert all(m.partition == p.partition_for("many", f"k{i % 5}") for i, m in enumerate(metas))
    assert len({(m.partition, m.id) for m in metas}) == 3000
    got = [r.value.decode() for r in replay(conn, "many") if r.value is not None]
    assert len(got) == 3000  # nothing of the refused call
    by_key: dict[str, list[int]] = {}
    for v in got:
        key, _, n = v.partition(":")
        by_key.setdefault(key, []).append(int(n))
    assert all(seq == sorted(seq) for seq in by_key.values())
