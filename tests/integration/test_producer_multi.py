"""The producer's MULTI path (``MULTI``, native ``XADD`` per record, ``FCALL commit``,
``EXEC``) against a real server: what ``commit.lua`` promises that ``append.lua`` promised.

A batch is written as the sender writes it (``Batch.packed(True)`` on one connection) and
its replies folded as the sender folds them (``fold_multi``), so each failure mode is
exercised on the wire: a retry after a lost reply (the second attempt's entries are undone
inside EXEC, the ids are the first attempt's), a batch out of sequence, a wrong key type
under the sequence or the groups hash, two producers on one partition, and the library
missing inside EXEC (on a private server this test starts and stops by pid).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import WrongTypeError
from partitions._base.functions import library_name
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._client.nodes import node_for_key
from partitions._client.wire import exchange
from partitions._producer.batch import Batch, Route, encode_record, multi_replies, packed_multi
from partitions._producer.producer import Producer
from partitions._producer.sender import fold_multi
from tests.helpers import ServerProc, layout, server_binaries

pytestmark = pytest.mark.timeout(120)


def _batch(conn: Connection, topic: str, values: list[bytes], *, pid: bytes, seq: int) -> Batch:
    route = Route(TopicAdmin(conn).get(topic), conn.keys)
    batch = Batch(topic, 0, route, time.monotonic(), time.monotonic() + 60)
    for v in values:
        _, chunk, _ = encode_record(route, v, b"k", None, 0, None, 1 << 20)
        batch.chunks.extend(chunk)
        batch.count += 1
    batch.pid, batch.seq = pid, seq
    return batch


def _send(conn: Connection, batch: Batch) -> Any:
    """One MULTI attempt of ``batch``, folded as the sender folds it."""
    stream = batch.route.stream_keys[0].decode()
    pool = node_for_key(conn, stream).connection_pool
    conn.functions.load(node_for_key(conn, stream))
    out = exchange(pool, [packed_multi([batch])], multi_replies([batch]))
    return fold_multi(out, [batch.count])[0]


def _values(conn: Connection, topic: str) -> list[bytes]:
    return [r.value for r in replay(conn, topic) if r.value is not None]


def test_a_retried_multi_batch_is_undone_and_learns_the_first_ids(conn: Connection) -> None:
    """The same batch sent again (its reply was lost): commit finds the sequence recorded,
    deletes the second attempt's entries inside EXEC and answers with the first's ids."""
    TopicAdmin(conn).create(TopicSpec("mretry", 1))
    values = [b"a", b"b", b"c", b"d", b"e"]
    first = _send(conn, _batch(conn, "mretry", values, pid=b"p1", seq=1))
    again = _send(conn, _batch(conn, "mretry", values, pid=b"p1", seq=1))
    assert first[0] == 1 and len(first) == 6
    assert again[0] == 2 and again[1:] == first[1:]
    assert _values(conn, "mretry") == values
    assert [r.id for r in replay(conn, "mretry")] == [i.decode() for i in first[1:]]
    # the next batch of the producer goes on after the duplicate
    nxt = _send(conn, _batch(conn, "mretry", [b"f", b"g", b"h", b"i"], pid=b"p1", seq=2))
    assert nxt[0] == 1
    assert _values(conn, "mretry") == [*values, b"f", b"g", b"h", b"i"]


def test_a_duplicate_whose_first_id_was_not_recorded_reads_the_ids_back(
    conn: Connection,
) -> None:
    """When a batch's ids left one millisecond (a server that does not freeze its clock for
    a transaction) its record says "~n" for the first id: a duplicate then reads its ids
    back from the stream."""
    TopicAdmin(conn).create(TopicSpec("mtilde", 1))
    values = [b"a", b"b", b"c", b"d"]
    first = _send(conn, _batch(conn, "mtilde", values, pid=b"p1", seq=1))
    seq_key = conn.keys.seq(layout(conn, "mtilde"), 0)
    record = conn.client.hget(seq_key, "p1").split()
    conn.client.hset(seq_key, "p1", b" ".join([record[0], b"~4", *record[2:]]))
    again = _send(conn, _batch(conn, "mtilde", values, pid=b"p1", seq=1))
    assert again == [2, *first[1:]]
    assert _values(conn, "mtilde") == values


def test_a_multi_batch_out_of_sequence_leaves_nothing(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("mseq", 1))
    assert _send(conn, _batch(conn, "mseq", [b"a", b"b", b"c", b"d"], pid=b"p1", seq=1))[0] == 1
    lost = _send(conn, _batch(conn, "mseq", [b"x", b"y", b"z", b"w"], pid=b"p1", seq=3))
    assert "OUTOFSEQ" in str(lost)
    unknown = _send(conn, _batch(conn, "mseq", [b"x", b"y", b"z", b"w"], pid=b"p2", seq=2))
    assert "OUTOFSEQ" in str(unknown)
    assert _values(conn, "mseq") == [b"a", b"b", b"c", b"d"]


def test_an_unreadable_sequence_record_fails_the_batch_with_nothing_written(
    conn: Connection,
) -> None:
    """A sequence record that is not "seq first last ms" (written by something else): commit
    cannot tell a duplicate, so the batch fails and its entries are undone."""
    TopicAdmin(conn).create(TopicSpec("mjunk", 1))
    conn.client.hset(conn.keys.seq(layout(conn, "mjunk"), 0), "p1", "junk")
    err = _send(conn, _batch(conn, "mjunk", [b"a", b"b", b"c", b"d"], pid=b"p1", seq=2))
    assert isinstance(err, Exception) and "unreadable" in str(err)
    assert _values(conn, "mjunk") == []


def test_wrong_key_types_fail_a_multi_batch_with_nothing_written(conn: Connection) -> None:
    """A string where the sequence hash or (safe retention) the groups hash belongs: the
    batch fails with WRONGTYPE and its XADDs are undone."""
    TopicAdmin(conn).create(TopicSpec("mtype", 1, safe_retention=True, max_length=10))
    conn.client.set(conn.keys.seq(layout(conn, "mtype"), 0), "not a hash")
    err = _send(conn, _batch(conn, "mtype", [b"a", b"b", b"c", b"d"], pid=b"p1", seq=1))
    assert "WRONGTYPE" in str(err)
    conn.client.delete(conn.keys.seq(layout(conn, "mtype"), 0))
    conn.client.set(conn.keys.stream_groups(layout(conn, "mtype"), 0), "not a hash")
    err = _send(conn, _batch(conn, "mtype", [b"a", b"b", b"c", b"d"], pid=b"p1", seq=1))
    assert "WRONGTYPE" in str(err)
    assert _values(conn, "mtype") == []
    conn.client.delete(conn.keys.stream_groups(layout(conn, "mtype"), 0))
    with Producer(conn, ProducerConfig(linger_ms=50)) as p:
        conn.client.set(conn.keys.seq(layout(conn, "mtype"), 0), "not a hash")
        futs = [p.send("mtype", f"v{i}", key="k") for i in range(8)]
        with pytest.raises(WrongTypeError):
            futs[-1].result(10)
    assert _values(conn, "mtype") == []


def test_one_commit_for_batches_of_topics_with_other_retention(conn: Connection) -> None:
    """One MULTI with batches of three topics (no retention; max length 5; safe retention,
    whose batch alone brings the groups key): each batch committed against its own keys
    and settings, the max length applied to its topic only, and the same round sent again
    (its reply lost) undone batch by batch with the first attempt's ids."""
    if conn.is_cluster:
        pytest.skip(
            "one MULTI for several partitions is the single-server round; on a "
            "cluster a MULTI holds one slot, one batch"
        )
    admin = TopicAdmin(conn)
    admin.create(TopicSpec("mxa", 1))
    admin.create(TopicSpec("mxb", 1, max_length=5))
    admin.create(TopicSpec("mxc", 1, safe_retention=True))
    values = [b"v%d" % i for i in range(300)]
    batches = [_batch(conn, t, values, pid=b"px", seq=1) for t in ("mxa", "mxb", "mxc")]
    stream = batches[0].route.stream_keys[0].decode()
    pool = node_for_key(conn, stream).connection_pool
    conn.functions.load(node_for_key(conn, stream))

    def send() -> list[Any]:
        out = exchange(pool, [packed_multi(batches)], multi_replies(batches))
        return fold_multi(out, [b.count for b in batches])

    first = send()
    assert [r[0] for r in first] == [1, 1, 1] and all(len(r) == 301 for r in first)
    assert len(_values(conn, "mxa")) == 300 and len(_values(conn, "mxc")) == 300
    assert len(_values(conn, "mxb")) < 300  # MAXLEN ~ 5: trimmed, whole nodes at a time
    again = send()
    assert [r[0] for r in again] == [2, 2, 2]
    assert again[0][1:] == first[0][1:] and again[2][1:] == first[2][1:]
    # mxb's batch was trimmed: all its ids when they lie in one millisecond (computed from the
    # record), else (Redis 7.0 does not freeze the clock in a transaction) those still in
    # the stream, its last ones
    kept = again[1][1:]
    assert len(kept) > 0 and kept == first[1][-len(kept) :]
    assert len(_values(conn, "mxa")) == 300 and len(_values(conn, "mxc")) == 300


def test_two_producers_on_one_partition(conn: Connection) -> None:
    """Two producers appending to one partition at once, MULTI batches interleaving: every
    record once, each producer's in its order, both sequences recorded."""
    TopicAdmin(conn).create(TopicSpec("mtwo", 1))
    n = 4000
    ids: dict[str, str] = {}

    def run(name: str) -> None:
        with Producer(conn, ProducerConfig(linger_ms=2, batch_size=50)) as p:
            p.send("mtwo", f"{name}-warm", key="k").result(10)  # the library is known loaded
            futs = [p.send("mtwo", f"{name}-{i}", key="k") for i in range(n)]
            p.flush(60)
            ids[name] = p.producer_id
            assert all(f.exception(0) is None for f in futs)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [v.decode() for v in _values(conn, "mtwo")]
    assert len(got) == 2 * (n + 1) and len(set(got)) == len(got)
    for name in ("a", "b"):
        mine = [int(v.split("-")[1]) for v in got if v.startswith(f"{name}-") and "warm" not in v]
        assert mine == list(range(n))
    recorded = conn.client.hgetall(conn.keys.seq(layout(conn, "mtwo"), 0))
    assert {k.decode() for k in recorded} == set(ids.values())


@pytest.fixture
def private() -> Iterator[ServerProc]:
    binaries = server_binaries()
    if not binaries:
        pytest.skip("no server binary")
    server = ServerProc(persistence="none", binary=binaries[0])
    try:
        yield server.start()
    finally:
        server.stop()


def test_library_deleted_inside_exec_appends_once_and_goes_on(private: ServerProc) -> None:
    """The library deleted while a producer sends MULTI batches (an admin pruned the version
    in use): the next batch's XADDs run and its FCALL commit fails inside EXEC. The batch
    is appended all the same, once; the producer takes a new id (the server did not record
    the sequence), loads the library and sends on; nothing is lost or doubled."""
    conn = connect(ClientConfig(url=private.url, namespace="lib"))
    try:
        TopicAdmin(conn).create(TopicSpec("mlib", 2))
        with Producer(conn, ProducerConfig(linger_ms=20, batch_size=10)) as p:
            p.send("mlib", "warm", key="k").result(10)
            first_id = p.producer_id
            futs = [p.send("mlib", f"a{i}", key=f"k{i % 2}") for i in range(40)]
            p.flush(30)
            conn.client.execute_command("FUNCTION", "DELETE", library_name())
            futs += [p.send("mlib", f"b{i}", key=f"k{i % 2}") for i in range(40)]
            p.flush(30)
            futs += [p.send("mlib", f"c{i}", key=f"k{i % 2}") for i in range(40)]
            p.flush(30)
            assert all(f.exception(0) is None for f in futs)
            assert p.producer_id != first_id
        got = sorted(v.decode() for v in _values(conn, "mlib"))
        want = sorted(["warm"] + [f"{c}{i}" for c in "abc" for i in range(40)])
        assert got == want
        by_id = {(f.result(0).partition, f.result(0).id) for f in futs}
        assert len(by_id) == len(futs)
    finally:
        conn.close()


def test_multi_is_what_goes_on_the_wire(private: ServerProc) -> None:
    """Batches of several records go as MULTI once a call of the library succeeded; a single
    record (and the first call, before the library is known loaded) as FCALL append."""
    conn = connect(ClientConfig(url=private.url, namespace="wire"))
    try:
        TopicAdmin(conn).create(TopicSpec("mwire", 1))

        def calls(name: str) -> int:
            return int(conn.client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))

        with Producer(conn, ProducerConfig(linger_ms=20)) as p:
            fcalls = calls("fcall")
            p.send("mwire", "warm", key="k").result(10)
            # commandstats count a script's own XADD calls too; the one EXEC is the probe's
            # (may this user send MULTI batches: a transaction that changes nothing)
            assert (calls("exec"), calls("fcall") - fcalls, calls("xadd")) == (1, 1, 1)
            futs = [p.send("mwire", f"v{i}", key="k") for i in range(100)]
            p.flush(30)
            ids = [f.result(0).id for f in futs]
        execs = calls("exec") - 1
        assert execs >= 1 and calls("fcall") - fcalls >= 1 + execs  # a commit per MULTI
        assert calls("xadd") == 101
        assert [r.id for r in replay(conn, "mwire")][1:] == ids
    finally:
        conn.close()


def test_a_large_round_goes_in_several_multis(private: ServerProc) -> None:
    """One round of four batches of 400 records to a single server: MULTIs of at most
    ``MULTI_MAX_RECORDS`` records (two of two batches), a commit each, every record once and
    in order per partition."""
    conn = connect(ClientConfig(url=private.url, namespace="caps"))
    try:
        TopicAdmin(conn).create(TopicSpec("mcaps", 4))

        def calls(name: str) -> int:
            return int(conn.client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))

        with Producer(conn, ProducerConfig(linger_ms=60_000, batch_size=1000)) as p:
            warm = p.send("mcaps", "warm", key="k", partition=0)
            p.flush(30)  # the library is known loaded: MULTI batches from now on
            warm.result(0)
            execs, fcalls = calls("exec"), calls("fcall")
            futs = [p.send("mcaps", f"{q}-{i}", key="k", partition=q)
                    for q in range(4) for i in range(400)]  # fmt: skip
            p.flush(30)
            assert (calls("exec") - execs, calls("fcall") - fcalls) == (2, 2)
            want = [q for q in range(4) for _ in range(400)]
            assert [f.result(0).partition for f in futs] == want
        got: dict[int, list[bytes]] = {}
        for r in replay(conn, "mcaps"):
            got.setdefault(r.partition, []).append(r.value or b"")
        for q in range(4):
            assert got[q][-400:] == [f"{q}-{i}".encode() for i in range(400)]
    finally:
        conn.close()


def test_a_least_privilege_producer_keeps_fcall_append(private: ServerProc) -> None:
    """A producer user with the rules of ``partstream acl print --role producer`` (XADD
    only on its streams, no MULTI, XREVRANGE, XTRIM or XDEL) is asked once, in a
    transaction that changes nothing, and keeps sending FCALL append: nothing refused on
    the way, every record appended once."""
    from partitions._admin.acl import acl_rules

    admin = connect(ClientConfig(url=private.url, namespace="lp"))
    try:
        TopicAdmin(admin).create(TopicSpec("lp", 2))
        admin.functions.load()
        rules = acl_rules("producer", user="prod", topics=["lp"], namespace="lp", password="pw")
        admin.client.execute_command("ACL", "SETUSER", *rules)
        url = private.url.replace("redis://", "redis://prod:pw@")
        conn = connect(ClientConfig(url=url, namespace="lp"))
        try:
            with Producer(conn, ProducerConfig(linger_ms=20)) as p:
                p.send("lp", "warm", key="k").result(10)
                futs = [p.send("lp", f"v{i}", key=f"k{i % 3}") for i in range(200)]
                p.flush(30)
                assert all(f.exception(0) is None for f in futs)
        finally:
            conn.close()
        stats = admin.client.info("commandstats")
        assert "cmdstat_exec" not in stats or stats["cmdstat_exec"]["calls"] == 0
        assert sorted(v.decode() for v in _values(admin, "lp")) == sorted(
            ["warm"] + [f"v{i}" for i in range(200)]
        )
        refused = {e["object"] for e in admin.client.acl_log()}
        probe = {"multi", "xrevrange", "xtrim", "xdel", "exec"}
        assert refused - {"config|get"} == probe, refused  # CONFIG GET: refused by design
    finally:
        admin.close()
