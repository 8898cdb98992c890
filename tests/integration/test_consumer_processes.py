"""Real consumer processes (tests/integration/consumer_worker.py) under faults: kill -9
mid-batch (L, O, D), SIGSTOP past the session (G), a handler that keeps failing (dead
letters), and `group seek --to @T --execute`. Session 1000 ms, heartbeat 200 ms."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.deadletter import DeadLetters
from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import UnknownGroupError
from partitions._client.connection import Connection
from partitions._producer.producer import Producer
from partitions.cli import main as cli_main
from tests.helpers import layout, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SCRIPT = Path(__file__).with_name("consumer_worker.py")
ROOT = SCRIPT.parents[2]
TOPIC, GROUP = "orders", "g"


@dataclass
class Worker:
    popen: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    member_id: str = ""

    def records(self) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["ev"] == "rec"]

    def bye(self) -> dict[str, Any]:
        return next(e for e in self.events if e["ev"] == "bye")


class Fleet:
    """Spawns worker processes; always kills them, by pid, at the end."""

    def __init__(self, url: str, conn: Connection) -> None:
        self.url, self.conn = url, conn
        self.workers: list[Worker] = []
        self.admin = GroupAdmin(conn)

    def spawn(self, *extra: str) -> Worker:
        cmd = [sys.executable, str(SCRIPT), "--url", self.url, "--ns", self.conn.keys.ns]
        cmd += ["--group", GROUP, "--topic", TOPIC, *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        w = Worker(popen)

        def read() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                ev = json.loads(line)
                if ev["ev"] == "ready":
                    w.member_id = ev["m"]
                w.events.append(ev)

        threading.Thread(target=read, daemon=True).start()
        self.workers.append(w)
        return w

    def stop(self, w: Worker) -> None:
        w.popen.send_signal(signal.SIGTERM)
        assert w.popen.wait(timeout=15) == 0
        wait_for(lambda: any(e["ev"] == "bye" for e in w.events), 5, "no bye")

    def cleanup(self) -> None:
        for w in self.workers:
            if w.popen.poll() is None:
                os.kill(w.popen.pid, signal.SIGCONT)
                os.kill(w.popen.pid, signal.SIGKILL)
            w.popen.wait(timeout=10)

    def balanced(self, n: int, parts: int) -> bool:
        try:
            d = self.admin.describe(GROUP)
        except UnknownGroupError:
            return False
        live = [w for w in self.workers if w.popen.poll() is None]
        return (
            d.state == "stable"
            and len(d.members) == n == len(live)
            and all(len(m.owned) == parts // n for m in d.members)
        )

    def all_records(self) -> list[dict[str, Any]]:
        return [r for w in self.workers for r in w.records()]


@pytest.fixture
def fleet(server_url: str, conn: Connection) -> Iterator[Fleet]:
    f = Fleet(server_url, conn)
    try:
        yield f
    finally:
        f.cleanup()


def produce_keyed(conn: Connection, n: int, keys: int = 500, start: int = 0) -> dict[str, str]:
    """n records, value "<key>:<seq of that key>"; returns {key: last value}."""
    seqs: Counter[str] = Counter()
    for i in range(start):
        seqs[f"k{i % keys}"] += 1
    with Producer(conn) as p:
        for i in range(start, start + n):
            k = f"k{i % keys}"
            p.send(TOPIC, f"{k}:{seqs[k]}", key=k)
            seqs[k] += 1
    return {k: f"{k}:{c - 1}" for k, c in seqs.items()}


def pending_ids(conn: Connection, partitions: set[int]) -> set[tuple[int, str]]:
    out = set()
    for p in partitions:
        for e in conn.client.xpending_range(
            conn.keys.stream(layout(conn, TOPIC), p), GROUP, "-", "+", 100_000
        ):
            out.add((p, e["message_id"].decode()))
    return out


def check_order(records: list[dict[str, Any]]) -> None:
    """O: per key, in processing time order, a record never comes before every earlier record
    of its key was processed once (re-processing after a crash may step back)."""
    by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in records:
        key, seq = r["v"].rsplit(":", 1)
        by_key[key].append((r["t"], int(seq)))
    for key, events in by_key.items():
        top = -1
        for _, seq in sorted(events):
            assert seq <= top + 1, f"key {key}: record {seq} processed before {top + 1}"
            top = max(top, seq)


def test_kill9_mid_batch_loses_nothing_keeps_order_and_bounds_duplicates(
    fleet: Fleet, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 12))
    workers = [fleet.spawn("--pause-every", "20") for _ in range(3)]
    wait_for(lambda: fleet.balanced(3, 12), 45, "never balanced")
    produce_keyed(conn, 50_000)
    victim = workers[1]
    wait_for(lambda: len(victim.records()) > 3000, 30, "victim never processed")
    desc = fleet.admin.describe(GROUP)
    owned = {tp.partition for m in desc.members if m.member_id == victim.member_id
             for tp in m.owned}  # fmt: skip
    os.kill(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(timeout=5)
    unacked_at_kill = pending_ids(conn, owned)  # nobody else reads them before the session ends
    assert unacked_at_kill  # killed mid-batch: it had fetched entries it never acked
    processed_by_victim = {(r["p"], r["id"]) for r in victim.records()}

    def done() -> bool:
        return len({(r["p"], r["id"]) for r in fleet.all_records()}) >= 50_000

    wait_for(done, 60, "not every record was processed")
    records = fleet.all_records()
    seen = Counter((r["p"], r["id"]) for r in records)
    assert len(seen) == 50_000  # L
    check_order(records)  # O
    twice = {k for k, c in seen.items() if c > 1}
    assert twice <= unacked_at_kill  # D
    assert twice <= processed_by_victim
    assert all(c <= 2 for c in seen.values())


def test_sigstopped_member_cannot_read_or_ack_after_losing_its_partitions(
    fleet: Fleet, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 12))
    workers = [fleet.spawn("--pause-every", "5") for _ in range(3)]
    wait_for(lambda: fleet.balanced(3, 12), 45, "never balanced")
    produce_keyed(conn, 15_000)
    zombie = workers[0]
    wait_for(lambda: len(zombie.records()) > 300, 20, "zombie never processed")
    os.kill(zombie.popen.pid, signal.SIGSTOP)
    old_tokens = {r["tok"] for r in zombie.records()}
    wait_for(lambda: _owned_by_others(fleet, zombie), 15, "no rebalance")
    os.kill(zombie.popen.pid, signal.SIGCONT)
    resumed_at = time.monotonic()  # it was evicted: its last heartbeat is a session old
    wait_for(
        lambda: len({(r["p"], r["id"]) for r in fleet.all_records()}) >= 15_000,
        40,
        "not every record was processed",
    )
    for w in workers:
        fleet.stop(w)
    records = fleet.all_records()
    # G: one grant token belongs to one member; nobody processed a record twice in one grant.
    per_grant = Counter((r["p"], r["id"], r["tok"]) for r in records)
    assert max(per_grant.values()) == 1
    owners_of_token: dict[int, set[str]] = defaultdict(set)
    for r in records:
        owners_of_token[r["tok"]].add(r["m"])
    assert all(len(ms) == 1 for ms in owners_of_token.values())
    # After waking, the zombie handed out nothing under its old grants: at most the one
    # record it was processing when it was stopped completes.
    late = [r for r in zombie.records() if r["t"] > resumed_at and r["tok"] in old_tokens]
    assert len(late) <= 1
    # ...and the acks it still had were refused by the fence.
    assert zombie.bye()["refused_acks"] >= 1
    assert len({(r["p"], r["id"]) for r in records}) == 15_000  # L
    check_order(records)  # O


def _owned_by_others(fleet: Fleet, zombie: Worker) -> bool:
    d = fleet.admin.describe(GROUP)
    ids = {m.member_id for m in d.members}
    return zombie.member_id not in ids and d.state == "stable" and len(d.partitions) == 12


def test_failing_handler_dead_letters_one_record_and_its_partition_flows(
    fleet: Fleet, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 2))
    produce_keyed(conn, 400, keys=20)
    poison = "k3:7"
    w = fleet.spawn("--fail-value", poison, "--max-deliveries", "3")
    wait_for(lambda: len(w.records()) >= 399, 20, "the rest did not flow")
    wait_for(lambda: DeadLetters(conn).list(TOPIC), 5, "no dead letter")
    fleet.stop(w)
    [d] = DeadLetters(conn).list(TOPIC)
    assert (d.reason, d.deliveries, d.group) == ("max_deliveries", 3, GROUP)
    assert d.record.value == poison.encode()
    assert sum(1 for e in w.events if e["ev"] == "fail") == 3
    values = [r["v"] for r in w.records()]
    assert poison not in values and len(set(values)) == 399
    later = [r for r in w.records() if r["p"] == d.partition and r["id"] > d.original_id]
    assert later  # records after the poison one in its partition were processed
    assert w.bye()["dead_lettered"] == 1


def test_group_seek_to_a_time_makes_the_group_reread_from_it(
    fleet: Fleet, conn: Connection, server_url: str
) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 4))
    produce_keyed(conn, 300)
    time.sleep(0.01)
    sec, usec = conn.client.time()
    t = sec * 1000 + usec // 1000
    time.sleep(0.01)
    produce_keyed(conn, 200, start=300)
    w1 = fleet.spawn()
    wait_for(lambda: len(w1.records()) >= 500, 20, "first pass incomplete")
    fleet.stop(w1)
    result = CliRunner().invoke(
        cli_main,
        ["--url", server_url, "--namespace", conn.keys.ns, "group", "seek", GROUP,
         "--to", f"@{t}", "--execute", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["executed"] is True
    w2 = fleet.spawn()
    wait_for(lambda: len(w2.records()) >= 200, 20, "second pass incomplete")
    time.sleep(0.3)
    fleet.stop(w2)
    again = w2.records()
    assert len(again) == 200
    assert all(int(r["id"].split("-")[0]) >= t for r in again)
    first_after_t = {r["v"] for r in w1.records() if int(r["id"].split("-")[0]) >= t}
    assert {r["v"] for r in again} == first_after_t
