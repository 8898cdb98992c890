"""Deliveries count what the application received, takeovers of any size, foreign entries.

* A record fetched into a consumer's buffer but never handed out is not counted toward
  ``max_deliveries`` (close, revocation, crash); a record that crashes its consumer (kill -9
  inside its handler) every time ends in the dead-letter stream alone and its partition
  flows. These run with the library's default ConsumerConfig and GroupSettings except a 3 s
  session (SESSION), so that a killed consumer's partition moves within the test's time
  instead of the default 30 s; delivery counting does not depend on it.
* A takeover of 9,000 (``fetch_count=10000``) and of 100,000 pending entries drains, in id
  order, with nothing lost (before, every read failed with Lua's "too many results to
  unpack" and the partition never flowed again).
* An entry another client wrote (raw XADD with fields of its own) reaches the application
  with its data in ``Record.fields``, or goes to the dead-letter stream as ``malformed`` by
  choice; dead-letter metadata cannot be overridden by the original entry's fields, and a
  malformed dead-letter entry is listed, never a crash.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.deadletter import DeadLetters
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.settings import GroupSettings
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions.cli import main as cli_main
from tests import helpers
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SESSION = GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=500)

# A consumer process: prints each record's value (flushed) before handling it; kills itself
# (-9) on the poison value, or holds what it read unacked until it is killed.
WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    from partitions._client.config import ConsumerConfig
    from partitions._client.connection import connect
    from partitions._consumer.consumer import Consumer
    from partitions._base.settings import GroupSettings
    url, ns, mode, arg = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # close() commits and leaves
    conn = connect(url=url, namespace=ns)
    session = GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=500)
    if mode == "poison":
        with Consumer("g", "orders", conn=conn, group_settings=session,
                      config=ConsumerConfig(fetch_count=100)) as c:
            for rec in c:
                print(json.dumps([rec.value.decode(), rec.deliveries]), flush=True)
                if rec.value.decode() == arg:
                    os.kill(os.getpid(), signal.SIGKILL)
    else:  # hold: read `arg` records without acking, say so, wait to be killed
        c = Consumer("g", "orders", conn=conn, group_settings=session,
                     config=ConsumerConfig(fetch_count=10000, max_poll_records=10000,
                                           auto_commit=False))
        n = 0
        while n < int(arg):
            n += len(c.poll(timeout=1.0))
        print(json.dumps(["held", n]), flush=True)
        signal.pause()
    """
)


def spawn(url: str, ns: str, mode: str, arg: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, ns, mode, arg],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def produce(conn: Connection, count: int, keys: int = 10, partitions: int = 1) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", partitions), exist_ok=True)
    helpers.produce(conn, "orders", count, keys)


def pending(conn: Connection, partition: int = 0) -> int:
    return int(
        conn.client.xpending(conn.keys.stream(layout(conn, "orders"), partition), "g")["pending"]
    )


drain = functools.partial(helpers.drain, timeout=60.0, poll_timeout=0.5)


def test_a_crash_looping_poison_record_is_dead_lettered_alone(
    conn: Connection, server_url: str
) -> None:
    produce(conn, 100)
    handled: list[tuple[str, int]] = []
    exits: list[int] = []
    max_deliveries = GroupSettings().max_deliveries
    for _ in range(max_deliveries + 3):
        proc = spawn(server_url, conn.keys.ns, "poison", "v0")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # ends when the process dies
                value, deliveries = json.loads(line)
                handled.append((value, deliveries))
                if {v for v, _ in handled} >= {f"v{i}" for i in range(1, 100)}:
                    break
        finally:
            if proc.poll() is None:
                time.sleep(0.3)  # let the last record's ack ride on the next read
                proc.send_signal(signal.SIGTERM)
            exits.append(proc.wait(timeout=90))  # close() on a loaded cluster can be slow
            reap(proc)
        if exits[-1] != -signal.SIGKILL:
            break
    # The poison record killed its consumer max_deliveries + 1 times at most (the first
    # hand-out of a fresh record is not recorded on the hot path), then went to the DLQ.
    assert exits.count(-signal.SIGKILL) in (max_deliveries, max_deliveries + 1), exits
    assert exits[-1] == 0
    letters = DeadLetters(conn).list("orders")
    assert [(d.record.value, d.reason) for d in letters] == [(b"v0", "max_deliveries")]
    assert letters[0].deliveries == max_deliveries
    others = [v for v, _ in handled if v != "v0"]
    assert sorted(set(others)) == sorted(f"v{i}" for i in range(1, 100))
    # The 99 others were each handed out once: the crashes never reached them.
    assert len(others) == 99 and all(d == 1 for v, d in handled if v != "v0")
    assert pending(conn) == 0


def test_buffered_records_are_not_counted_on_close_or_revocation(conn: Connection) -> None:
    produce(conn, 50)
    small = GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=500, max_deliveries=2)
    for _ in range(4):  # each takes one record and closes with 49..46 others in its buffer
        with Consumer("g", "orders", conn=conn, group_settings=small) as c:
            assert len(c.poll(max_records=1, timeout=5)) == 1
    # Revocation: a second member joins while the first holds a full buffer of 1 partition.
    with Consumer("g", "orders", conn=conn, group_settings=small) as c:
        got = c.poll(max_records=1, timeout=5)
        assert len(got) == 1
        rest = drain(c, 45)
    assert DeadLetters(conn).list("orders") == []
    assert len(rest) == 45 and all(r.deliveries == 1 for r in got + rest)
    assert pending(conn) == 0


def test_nacked_record_counts_each_hand_out(conn: Connection) -> None:
    produce(conn, 3)
    settings = GroupSettings(max_deliveries=3)
    seen: list[tuple[str, int]] = []
    with Consumer("g", "orders", conn=conn, group_settings=settings) as c:
        end = time.monotonic() + 20
        while len({v for v, _ in seen}) < 3 or len(seen) < 5:
            assert time.monotonic() < end
            for rec in c.poll(max_records=1, timeout=0.5):
                seen.append((rec.value.decode(), rec.deliveries))  # type: ignore[union-attr]
                if rec.value == b"v1":
                    c.nack(rec)
    assert seen == [("v0", 1), ("v1", 1), ("v1", 2), ("v1", 3), ("v2", 1)]
    [d] = DeadLetters(conn).list("orders")
    assert (d.record.value, d.deliveries, d.reason) == (b"v1", 3, "max_deliveries")


@pytest.mark.parametrize("count", [9_000, 100_000])
def test_takeover_of_many_pending_entries_drains_in_order(
    conn: Connection, server_url: str, count: int
) -> None:
    produce(conn, count, keys=100)
    proc = spawn(server_url, conn.keys.ns, "hold", str(count))
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == ["held", count]
        assert pending(conn) == count
    finally:
        reap(proc)  # kill -9 with every record handed out and unacked
    # A new member takes over once the dead one's session expired; default ConsumerConfig.
    with Consumer("g", "orders", conn=conn, group_settings=SESSION) as c:
        got = drain(c, count, timeout=180)
    assert len(got) == count
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(count)]
    # The dead owner's hand-outs were never recorded (the hot path does not write per record):
    # this is the first recorded one, and the next crash would count.
    assert all(r.deliveries == 1 for r in got)
    assert DeadLetters(conn).list("orders") == []
    assert pending(conn) == 0


def foreign_entry(conn: Connection) -> str:
    TopicAdmin(conn).create(TopicSpec("orders", 1), exist_ok=True)
    key = conn.keys.stream(layout(conn, "orders"), 0)
    rid = conn.client.xadd(key, {"payload": b'{"a": 1}', "user": b"svc-go"})
    return rid.decode()


def test_foreign_entries_are_delivered_with_their_fields(conn: Connection) -> None:
    rid = foreign_entry(conn)
    produce(conn, 1)
    with Consumer("g", "orders", conn=conn) as c:
        first, own = drain(c, 2)
    assert first.id == rid and first.foreign
    assert first.fields == {b"payload": b'{"a": 1}', b"user": b"svc-go"}
    assert (first.key, first.value, first.headers) == (None, None, {})
    assert not own.foreign and own.fields == {b"key": b"k0", b"value": b"v0"}


def test_foreign_entries_can_be_dead_lettered_as_malformed(conn: Connection) -> None:
    rid = foreign_entry(conn)
    produce(conn, 2)
    with Consumer(
        "g", "orders", conn=conn, config=ConsumerConfig(foreign_entries="dead_letter")
    ) as c:
        got = drain(c, 2)
        c.poll(timeout=0.1)  # the last ack
    assert [r.value for r in got] == [b"v0", b"v1"]
    [d] = DeadLetters(conn).list("orders")
    assert (d.original_id, d.reason, d.deliveries) == (rid, "malformed", 0)
    assert d.record.fields == {b"payload": b'{"a": 1}', b"user": b"svc-go"}
    assert pending(conn) == 0


def test_dead_letter_metadata_cannot_be_overridden_by_the_entry(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1), exist_ok=True)
    key = conn.keys.stream(layout(conn, "orders"), 0)
    rid = conn.client.xadd(
        key, {"dlq.partition": b"9", "dlq.reason": b"fake", "dlq.group": b"other"}
    ).decode()
    with Consumer("g", "orders", conn=conn) as c:
        [rec] = drain(c, 1)
        c.dead_letter(rec, reason="bad")
    [d] = DeadLetters(conn).list("orders")
    assert (d.partition, d.reason, d.group, d.original_id) == (0, "bad", "g", rid)
    assert d.record.fields[b"dlq.partition"] == b"9"


def test_a_malformed_dead_letter_entry_is_listed_not_a_crash(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1), exist_ok=True)
    dlq = conn.keys.dlq(layout(conn, "orders"), 0)
    conn.client.xadd(dlq, {"dlq.topic": "orders", "dlq.partition": "zero", "junk": "x"})
    conn.client.xadd(dlq, {"something": "else"})
    letters = DeadLetters(conn).list("orders")
    assert len(letters) == 2
    assert letters[0].partition is None
    assert any("not an integer" in p for p in letters[0].problems)
    assert letters[1].problems and letters[1].record.fields == {b"something": b"else"}
    runner = CliRunner()
    result = runner.invoke(
        cli_main,
        ["--url", conn.config.url or "", "--namespace", conn.keys.ns, "dlq", "list", "orders",
         "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    listed: list[dict[str, Any]] = json.loads(result.output)
    assert len(listed) == 2 and listed[0]["problems"]
    # Nothing of these can be replayed, and replay says so instead of failing.
    replay = DeadLetters(conn).replay("orders")
    assert (replay.replayed, replay.skipped) == (0, 2)


def test_replay_refuses_a_dead_letter_whose_origin_is_another_stream(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2), exist_ok=True)
    TopicAdmin(conn).create(TopicSpec("payments", 1), exist_ok=True)
    forged = {"dlq.topic": "payments", "dlq.partition": "0", "dlq.id": "1-0", "dlq.group": "g",
              "dlq.deliveries": "1", "dlq.reason": "rejected", "value": "pay me"}  # fmt: skip
    conn.client.xadd(conn.keys.dlq(layout(conn, "orders"), 1), forged)
    [d] = DeadLetters(conn).list("orders")
    assert any("does not match the dead-letter stream" in p for p in d.problems)
    runner = CliRunner()
    result = runner.invoke(
        cli_main,
        ["--url", conn.config.url or "", "--namespace", conn.keys.ns, "dlq", "replay", "orders"],
    )
    assert result.exit_code == 0, result.output
    assert "refused" in result.stderr and "payments/0" in result.stderr
    assert conn.client.xlen(conn.keys.stream(layout(conn, "payments"), 0)) == 0
    assert DeadLetters(conn).list("orders") == [d]  # left where it is, for a person to look at
