"""The producer at its edges, on the shared test server: record shape refused in send(), batches
that are all or nothing and never wedge the next one, bounded script calls, and the produce
command's accounting of a bad line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.exceptions as rex
from click.testing import CliRunner

from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import (
    ConfigError,
    InvalidRecordError,
    RecordTooLargeError,
    WrongTypeError,
)
from partitions._base.records import MAX_HEADERS
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection
from partitions._producer.accumulator import Accumulator
from partitions._producer.batch import MAX_BATCH_BYTES, Batch
from partitions._producer.producer import Producer
from partitions.cli import main
from tests.helpers import layout

MiB = 1024 * 1024


def values(conn: Connection, topic: str, partition: int | None = None) -> list[bytes]:
    parts = None if partition is None else [partition]
    return [r.value for r in replay(conn, topic, partitions=parts) if r.value is not None]


# -- record shape -----------------------------------------------------------------------------
def test_too_many_headers_is_refused_in_send_and_its_batch_goes_on(conn: Connection) -> None:
    """The issue's case: ten records and one with 4,100 one-byte headers in one batch."""
    TopicAdmin(conn).create(TopicSpec("hdr", 1))
    with Producer(conn, ProducerConfig(linger_ms=200)) as p:
        futs = [p.send("hdr", f"v{i}", key="k") for i in range(5)]
        with pytest.raises(InvalidRecordError, match="4100 headers"):
            p.send("hdr", "big", key="k", headers={f"h{i}": "x" for i in range(4100)})
        futs += [p.send("hdr", f"v{i}", key="k") for i in range(5, 10)]
        assert [f.result(10).partition for f in futs] == [0] * 10
        at_limit = p.send("hdr", "max", key="k", headers={f"h{i}": "x" for i in range(1000)})
        after = p.send("hdr", "after", key="k")
        at_limit.result(10)
        after.result(10)
    records = list(replay(conn, "hdr"))
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)] + [b"max", b"after"]
    assert len(records[10].headers) == MAX_HEADERS


def test_validate_runs_sends_checks_without_queuing(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("val", 4))
    with Producer(conn, ProducerConfig(max_record_bytes=100)) as p:
        assert p.validate("val", "v", key="k") == p.partition_for("val", "k")
        assert p.validate("val", "v") is None  # keyless: picked when sent
        with pytest.raises(InvalidRecordError):
            p.validate("val", "v", headers={f"h{i}": "" for i in range(MAX_HEADERS + 1)})
        with pytest.raises(RecordTooLargeError):
            p.validate("val", "x" * 101)
        with pytest.raises(ConfigError, match=r"partitions 0\.\.3"):
            p.validate("val", "v", partition=4)
    assert values(conn, "val") == []


# -- all or nothing ---------------------------------------------------------------------------
def _script_args(pid: str, seq: int, records: list[list[Any]]) -> list[Any]:
    flat: list[Any] = []
    for rec in records:
        flat += rec
    return [pid, seq, 0, 0, 0, len(records), *flat]


@pytest.mark.parametrize(
    "bad",
    [
        [8202, *([b"f", b"v"] * 4101)],  # over Lua's unpack limit: it broke a batch half-way
        [3, b"key", b"k", b"value"],  # an odd field count
        [-2, b"key", b"k"],
        [b"x", b"key", b"k"],
    ],
    ids=["unpack-limit", "odd-fields", "negative", "not-a-number"],
)
def test_append_script_refuses_a_malformed_batch_before_writing(
    conn: Connection, bad: list[Any]
) -> None:
    TopicAdmin(conn).create(TopicSpec("atom", 1))
    stream, seq = conn.keys.stream(layout(conn, "atom"), 0), conn.keys.seq(layout(conn, "atom"), 0)
    groups = conn.keys.stream_groups(layout(conn, "atom"), 0)
    good = [[0, b"k", b"v%d" % i] for i in range(5)]
    with pytest.raises(Exception, match=r"BADBATCH .*nothing written"):
        conn.functions.call("append", [stream, seq, groups], _script_args("pidA", 1, [*good, bad]))
    assert conn.client.xlen(stream) == 0
    assert not conn.client.exists(seq)
    # The refused call did not use up the sequence number: batch 1 is still expected.
    ok = conn.functions.call("append", [stream, seq, groups], _script_args("pidA", 1, good))
    assert ok[0] == 1 and conn.client.xlen(stream) == 5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["pidB", 1, 0, 0, 0, 2, 0, b"k", b"v"], "record 2 has field count nil"),
        (["pidB", 1, 0, 0, 0, 1, 0, b"k", b"v", b"extra"], "do not match"),
        (["pidB", 1, "007", 0, 0, 1, 0, b"k", b"v"], "integers"),  # XTRIM would refuse it
        (["pidB", 1, 0, "1e20", 0, 1, 0, b"k", b"v"], "integers"),
        (["pidB", 1, 0, 0, 0, 0], "at least one record"),
        (["pidB", 0, 0, 0, 0, 1, 0, b"k", b"v"], "sequence"),
    ],
)
def test_append_script_checks_its_header_arguments(
    conn: Connection, args: list[Any], match: str
) -> None:
    TopicAdmin(conn).create(TopicSpec("hdrargs", 1))
    stream, seq = (
        conn.keys.stream(layout(conn, "hdrargs"), 0),
        conn.keys.seq(layout(conn, "hdrargs"), 0),
    )
    groups = conn.keys.stream_groups(layout(conn, "hdrargs"), 0)
    with pytest.raises(Exception, match=f"BADBATCH .*{match}"):
        conn.functions.call("append", [stream, seq, groups], args)
    assert not conn.client.exists(stream) and not conn.client.exists(seq)


def test_refused_batch_fails_alone_and_does_not_wedge_the_next(conn: Connection) -> None:
    """A WRONGTYPE partition key refuses a whole batch: it fails at once (no retrying a refusal),
    nothing of it is written, another partition's batch in the same round is appended, and
    once the key is fixed the next batch of the partition goes through (its sequence number
    was given back: before, it was refused as OUTOFSEQ)."""
    TopicAdmin(conn).create(TopicSpec("wedge", 2))
    stream0 = conn.keys.stream(layout(conn, "wedge"), 0)
    with Producer(conn, ProducerConfig(linger_ms=50)) as p:
        p.send("wedge", "first", partition=0).result(10)
        conn.client.delete(stream0)
        conn.client.set(stream0, "someone else's string")
        start = time.monotonic()
        refused = [p.send("wedge", f"r{i}", partition=0) for i in range(5)]
        other = [p.send("wedge", f"o{i}", partition=1) for i in range(5)]
        for f in refused:
            with pytest.raises(WrongTypeError):
                f.result(10)
        assert time.monotonic() - start < 5  # not retried until the delivery timeout
        assert [f.result(10).partition for f in other] == [1] * 5
        assert conn.client.get(stream0) == b"someone else's string"
        conn.client.delete(stream0)
        nxt = [p.send("wedge", f"n{i}", partition=0) for i in range(3)]
        assert [f.result(10).partition for f in nxt] == [0] * 3
    assert values(conn, "wedge", 0) == [b"n0", b"n1", b"n2"]
    assert values(conn, "wedge", 1) == [b"o0", b"o1", b"o2", b"o3", b"o4"]


def test_wrongtype_sequence_key_refuses_before_writing(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("seqclash", 1))
    seq = conn.keys.seq(layout(conn, "seqclash"), 0)
    conn.client.set(seq, "not a hash")
    with Producer(conn, ProducerConfig(linger_ms=1)) as p:
        with pytest.raises(WrongTypeError):
            p.send("seqclash", "v", key="k").result(10)
        conn.client.delete(seq)
        p.send("seqclash", "w", key="k").result(10)
    assert values(conn, "seqclash") == [b"w"]


# -- bounded calls ----------------------------------------------------------------------------
@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(records, packed bytes) of every batch the producer puts on the wire."""
    seen: list[tuple[int, int]] = []
    real = Accumulator.settle

    def spy(self: Accumulator, group: list[Batch], *args: Any) -> Any:
        # Settled before the futures resolve: the batches still hold their packed records.
        seen.extend((b.count, len(b.packed(b.count > 1))) for b in group)
        return real(self, group, *args)

    monkeypatch.setattr(Accumulator, "settle", spy)
    yield seen


def test_batches_are_closed_by_bytes(conn: Connection, calls: list[tuple[int, int]]) -> None:
    """batch_size records of max_record_bytes each would make one 100 MiB call; instead each
    call stays within MAX_BATCH_BYTES, or holds a single record."""
    TopicAdmin(conn).create(TopicSpec("bytes", 1))
    cfg = ProducerConfig(linger_ms=60_000, batch_size=100, max_record_bytes=MiB)
    big = b"x" * (MiB - 10)
    with Producer(conn, cfg) as p:
        futs = [p.send("bytes", big + b"%03d" % i, key="k") for i in range(100)]
        p.flush(60)
        assert all(f.result(0).partition == 0 for f in futs)
    assert sum(n for n, _ in calls) == 100
    assert len(calls) >= 100 * MiB // MAX_BATCH_BYTES
    assert all(size <= MAX_BATCH_BYTES + 4096 for _, size in calls)
    got = values(conn, "bytes")
    assert [v[-3:] for v in got] == [b"%03d" % i for i in range(100)]


def test_largest_accepted_record_goes_alone(conn: Connection, calls: list[tuple[int, int]]) -> None:
    """At the largest max_record_bytes ProducerConfig accepts (64 MiB), a full-size record
    after a batch that is almost full: it is appended, in its own call, in order."""
    TopicAdmin(conn).create(TopicSpec("huge", 1))
    limit = 64 * MiB
    cfg = ProducerConfig(linger_ms=60_000, max_record_bytes=limit)
    with Producer(conn, cfg) as p:
        first = p.send("huge", b"a" * (MAX_BATCH_BYTES - 100), key="k")
        biggest = p.send("huge", b"b" * (limit - 1), key="k")
        last = p.send("huge", b"c", key="k")
        p.flush(120)
        ids = [f.result(0).id for f in (first, biggest, last)]
    assert [n for n, _ in calls] == [1, 1, 1]
    assert max(size for _, size in calls) < limit + 4096
    lengths = [len(r.value or b"") for r in replay(conn, "huge")]
    assert lengths == [MAX_BATCH_BYTES - 100, limit - 1, 1]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_many_max_header_records_are_split_into_bounded_calls(
    conn: Connection, calls: list[tuple[int, int]]
) -> None:
    """Records at the header limit are argument-heavy (2,004 per record): a batch of them
    is still bounded by bytes, and every record keeps all its headers."""
    TopicAdmin(conn).create(TopicSpec("wide", 1))
    headers = {f"header-{i:04d}": f"value-{i:04d}" for i in range(MAX_HEADERS)}
    with Producer(conn, ProducerConfig(linger_ms=60_000, batch_size=1000)) as p:
        futs = [p.send("wide", b"%d" % i, key="k", headers=headers) for i in range(300)]
        p.flush(60)
        for f in futs:
            f.result(0)
    assert len(calls) >= 2 and all(size <= MAX_BATCH_BYTES for _, size in calls)
    records = list(replay(conn, "wide"))
    assert [r.value for r in records] == [b"%d" % i for i in range(300)]
    assert all(len(r.headers) == MAX_HEADERS for r in records)


def test_delivery_timeout_below_the_socket_timeout_is_refused(conn: Connection) -> None:
    with pytest.raises(ConfigError, match="socket timeout"):
        Producer(conn, ProducerConfig(delivery_timeout_ms=1000))


# -- partstream produce -----------------------------------------------------------------------
def cli(cfg: ClientConfig, *args: str, input: str | bytes) -> tuple[int, str, str]:
    res = CliRunner().invoke(
        main, ["--url", str(cfg.url), "--namespace", cfg.namespace, *args], input=input
    )
    return res.exit_code, res.stdout, res.stderr


def test_produce_stops_at_a_bad_line_and_counts_what_it_produced(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("lines", 2))
    good = "".join(orjson.dumps({"id": i}).decode() + "\n" for i in range(7))
    code, out, err = cli(
        client_config, "produce", "lines", "--key-field", "id", input=good + "not json\n{}\n"
    )
    assert code == 1
    assert err.startswith("error: SerializationError: line 8: not JSON") and err.count("\n") == 1
    assert "7 records produced to lines from the lines before it" in err
    assert out.count("Produced to partition") == 7
    assert sorted(values(conn, "lines")) == sorted(good.encode().splitlines())

    code, _, err = cli(
        client_config, "produce", "lines", "-q", input="ok\n" * 3 + "x" * 1_100_000 + "\nz\n"
    )
    assert code == 1
    assert err.startswith("error: RecordTooLargeError: line 4: ")
    assert "3 records produced to lines from the lines before it" in err
    assert len(values(conn, "lines")) == 10


def test_produce_validate_first_writes_nothing_from_bad_input(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("vf", 2))
    lines = "".join(orjson.dumps({"id": i}).decode() + "\n" for i in range(5))
    code, _, err = cli(
        client_config, "produce", "vf", "--key-field", "id", "--validate-first",
        input=lines + '{"other": 1}\n' + lines,
    )  # fmt: skip
    assert code == 1
    assert err.startswith("error: SerializationError: line 6: no field 'id'")
    assert "nothing was produced" in err and err.count("\n") == 1
    assert values(conn, "vf") == []
    code, out, err = cli(
        client_config, "produce", "vf", "--key-field", "id", "--validate-first", "-q",
        input=lines + "\n" + lines,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "10 records produced to vf"
    assert len(values(conn, "vf")) == 10


def test_produce_counts_records_the_server_refused(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("refuse", 2))
    conn.client.set(conn.keys.stream(layout(conn, "refuse"), 1), "not a stream")
    code, _, err = cli(client_config, "produce", "refuse", "-p", "0", "-q", input="a\nb\n")
    assert code == 0 and "2 records produced to refuse" in _
    code, _, err = cli(client_config, "produce", "refuse", "-p", "1", input="c\nd\n")
    assert code == 1 and err.startswith("error: WrongTypeError: ") and err.count("\n") == 1
    assert "stopped after line 2: 0 records produced to refuse, 2 failed" in err
    with pytest.raises(rex.ResponseError):
        conn.client.xlen(conn.keys.stream(layout(conn, "refuse"), 1))


def test_the_sender_keeps_its_connection_across_back_to_back_rounds_and_returns_it_idle(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a single server a busy sender takes a connection from the pool once, not once a
    round (issue 18: the pool's get and release cost 10-30 us of CPU a round), and
    gives it back when it has nothing to send. Each round sends the next record while it is
    on the wire, so the sender finds work every time it drains: 20 rounds back to back."""
    if conn.is_cluster:
        pytest.skip("a cluster's sender takes a node's connection each round")
    import partitions._client.wire as wire
    import partitions._producer.sender as sender_mod

    pool = conn.client.connection_pool
    rounds, gets = [0], [0]
    real_exchange, real_get = wire.exchange_on, pool.get_connection
    TopicAdmin(conn).create(TopicSpec("held", 4))
    with Producer(conn, ProducerConfig(linger_ms=0)) as p:
        futs = [p.send("held", b"warm", key=b"w")]
        futs[0].result(10)

        def exchange_on(c: Any, payload: list[bytes], expect: int) -> list[Any]:
            rounds[0] += 1
            if rounds[0] < 20:
                futs.append(p.send("held", b"v%d" % rounds[0], key=b"%d" % rounds[0]))
            return real_exchange(c, payload, expect)

        def get_connection(*args: Any, **kwargs: Any) -> Any:
            gets[0] += 1
            return real_get(*args, **kwargs)

        monkeypatch.setattr(sender_mod, "exchange_on", exchange_on, raising=False)
        monkeypatch.setattr(wire, "exchange_on", exchange_on)  # (a pool's exchange calls it)
        monkeypatch.setattr(pool, "get_connection", get_connection)
        futs.append(p.send("held", b"v0", key=b"0"))
        deadline = time.monotonic() + 10
        while len(futs) < 21 and time.monotonic() < deadline:
            time.sleep(0.01)
        for f in futs:
            f.result(10)
        assert rounds[0] >= 20
        assert gets[0] <= 2, (gets[0], rounds[0])  # (one each if both senders took rounds)
        deadline = time.monotonic() + 5
        while getattr(pool, "_in_use_connections", ()) and time.monotonic() < deadline:
            time.sleep(0.01)  # (the senders give theirs back before they wait)
        assert not getattr(pool, "_in_use_connections", ())
    assert len(values(conn, "held")) == 21
