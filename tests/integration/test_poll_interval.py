"""max_poll_interval_ms (Kafka's max.poll.interval.ms): a live member whose application stopped
asking for records gives its partitions up, through the coordinator, without waiting for a
session timeout; the call that finally returns hands out and acks nothing it lost.

The multi-process test runs tests/integration/poll_worker.py: one worker's handler blocks on
its first record far past a 3 s interval (its session, 10 s, never expires: heartbeats go on).
The in-process tests cover poll(), iteration and commit() on one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import NotOwnerError, PollIntervalExceededError, UnknownGroupError
from partitions._base.records import Record
from partitions._base.types import TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main
from tests import helpers
from tests.helpers import layout, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).with_name("poll_worker.py")
ROOT = SCRIPT.parents[2]
TOPIC, GROUP = "orders", "g"
MAX_POLL_MS, SESSION_MS, HEARTBEAT_MS = 3000, 10_000, 500


def produce(conn: Connection, n: int, keys: int = 40) -> None:
    with Producer(conn) as p:
        for i in range(n):
            p.send(TOPIC, f"k{i % keys}:{i // keys}", key=f"k{i % keys}")


def pending(conn: Connection, partitions: int) -> int:
    total = 0
    for p in range(partitions):
        info = conn.client.xpending(conn.keys.stream(layout(conn, TOPIC), p), GROUP)
        total += int(info["pending"])
    return total


# -- several processes ------------------------------------------------------------------------
@dataclass
class Worker:
    popen: subprocess.Popen[str]
    stderr: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    member_id: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["ev"] == kind]


class Fleet:
    """Spawns poll_worker.py processes; always kills them, by pid, at the end."""

    def __init__(self, url: str, conn: Connection, tmp: Path) -> None:
        self.url, self.conn, self.tmp = url, conn, tmp
        self.workers: list[Worker] = []
        self.admin = GroupAdmin(conn)

    def spawn(self, *extra: str) -> Worker:
        cmd = [sys.executable, str(SCRIPT), "--url", self.url, "--ns", self.conn.keys.ns]
        cmd += ["--group", GROUP, "--topic", TOPIC, "--max-poll-ms", str(MAX_POLL_MS)]
        cmd += ["--session-ms", str(SESSION_MS), "--heartbeat-ms", str(HEARTBEAT_MS), *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        err_path = self.tmp / f"worker{len(self.workers)}.stderr"
        with open(err_path, "w") as err:
            popen = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env
            )
        w = Worker(popen, err_path)

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

    def stop(self, w: Worker) -> dict[str, Any]:
        w.popen.send_signal(signal.SIGTERM)
        assert w.popen.wait(timeout=20) == 0, w.stderr.read_text()[-2000:]
        return wait_for(lambda: next(iter(w.of("bye")), None), 5, "no bye")  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        for w in self.workers:
            if w.popen.poll() is None:
                os.kill(w.popen.pid, signal.SIGKILL)
            w.popen.wait(timeout=10)

    def owned(self) -> dict[str, set[int]]:
        """member id -> partitions it owns, or {} while the group is not stable."""
        try:
            d = self.admin.describe(GROUP)
        except UnknownGroupError:
            return {}
        if d.state != "stable":
            return {}
        return {m.member_id: {tp.partition for tp in m.owned} for m in d.members}


@pytest.fixture
def fleet(server_url: str, conn: Connection, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(server_url, conn, tmp_path)
    try:
        yield f
    finally:
        f.cleanup()


def test_stuck_handler_loses_its_partitions_after_the_poll_interval(
    fleet: Fleet, conn: Connection, tmp_path: Path
) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 4))
    release = tmp_path / "release"
    stuck = fleet.spawn("--hang-first", "--release-file", str(release))
    other = fleet.spawn()
    wait_for(lambda: stuck.member_id and other.member_id, 30, "workers never started")

    def balanced() -> bool:
        owned = fleet.owned()
        return len(owned) == 2 and all(len(ps) == 2 for ps in owned.values())

    wait_for(balanced, 45, "never balanced")
    lost = fleet.owned()[stuck.member_id]
    produce(conn, 400)
    all_ids = {(p, e[0].decode()) for p in range(4) for e in _ids(conn, p)}
    assert len(all_ids) == 400

    [hang] = wait_for(lambda: stuck.of("hang"), 20, "the stuck worker never got a record")
    assert hang["p"] in lost

    def other_has_all() -> bool:
        return {(r["p"], r["id"]) for r in other.of("rec")} >= all_ids

    wait_for(other_has_all, 60, "the other worker did not process every record")
    # The stuck member left the group (it is still alive and heartbeating: its session is
    # 10 s and the member is gone from the group long before).
    assert stuck.popen.poll() is None and not stuck.of("rec")
    assert members(conn) == {other.member_id}

    # The other worker took the lost partitions within the interval plus a heartbeat (and a
    # margin for a noisy machine), never before the interval ran out.
    taken = [r for r in other.of("rec") if r["p"] in lost]
    first = min(r["t"] for r in taken)
    interval, beat = MAX_POLL_MS / 1000, HEARTBEAT_MS / 1000
    assert hang["t"] + interval - 0.3 <= first <= hang["t"] + interval + beat + 4.0
    assert first - hang["t"] < SESSION_MS / 1000  # not a session expiry
    # ...including the record in the stuck handler's hands, once it was fenced.
    again = [r for r in taken if (r["p"], r["id"]) == (hang["p"], hang["id"])]
    assert len(again) == 1 and again[0]["t"] >= first and again[0]["tok"] > hang["tok"]
    counts = Counter((r["p"], r["id"]) for r in other.of("rec"))
    assert set(counts.values()) == {1}  # nothing twice

    wait_for(lambda: pending(conn, 4) == 0, 10, "the other worker did not ack everything")
    release.touch()
    [done] = wait_for(lambda: stuck.of("rec"), 20, "the stuck handler never returned")
    [removed] = wait_for(lambda: stuck.of("removed"), 20, "no PollIntervalExceededError")
    assert f"max_poll_interval_ms={MAX_POLL_MS}" in removed["msg"]
    assert {p for _, p in removed["parts"]} == lost
    wait_for(balanced, 45, "the stuck member did not rejoin")
    time.sleep(1.0)  # room for anything it might wrongly still hand out
    bye_stuck, _ = fleet.stop(stuck), fleet.stop(other)

    # The stuck member processed only the record it had in hand when it hung, and its ack of
    # it was refused by the fence (the other worker had acked it already).
    assert stuck.of("rec") == [done] and (done["p"], done["id"]) == (hang["p"], hang["id"])
    assert bye_stuck["refused_acks"] >= 1
    assert pending(conn, 4) == 0
    log = stuck.stderr.read_text()
    assert f"max_poll_interval_ms={MAX_POLL_MS}" in log and "leaving the group" in log


def _ids(conn: Connection, p: int) -> list[Any]:
    return conn.client.xrange(conn.keys.stream(layout(conn, TOPIC), p))  # type: ignore[no-any-return]


# -- one process --------------------------------------------------------------------------------
FAST = helpers.FAST.with_changes(session_timeout_ms=SESSION_MS, heartbeat_interval_ms=300)


def consumer(conn: Connection, **config: Any) -> Consumer:
    return Consumer(
        GROUP, TOPIC, conn=conn, config=ConsumerConfig(block_ms=100, **config), group_settings=FAST
    )


def members(conn: Connection) -> set[str]:
    return {m.member_id for m in GroupAdmin(conn).describe(GROUP).members}


def test_waiting_inside_poll_does_not_count_but_not_polling_does(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 2))
    with consumer(conn, max_poll_interval_ms=1000) as a:
        wait_for(lambda: len(a.assignment()) == 2, 20, "no assignment")
        assert a.poll(timeout=3.0) == []  # three intervals inside one poll: still a member
        assert members(conn) == {a.member_id}
        left_at = time.monotonic()
        wait_for(lambda: not members(conn), 10, "the member never left")
        assert time.monotonic() - left_at < SESSION_MS / 1000
        with pytest.raises(PollIntervalExceededError, match="max_poll_interval_ms=1000") as err:
            a.poll(timeout=0.1)
        assert err.value.retriable and err.value.member_id == a.member_id
        assert err.value.partitions == {(TOPIC, 0), (TOPIC, 1)}
        # The failed call started the rejoin: polling again gets the partitions back.
        deadline = time.monotonic() + 20
        while len(a.assignment()) < 2 and time.monotonic() < deadline:
            a.poll(timeout=0.1)
        assert a.assignment() == {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}


def settle(*cs: Consumer) -> list[Record]:
    """Poll every consumer in turn until the partitions are spread evenly among them;
    returns what they received meanwhile (committed)."""
    got: list[Record] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for c in cs:
            batch = c.poll(timeout=0.05)
            got.extend(batch)
            if batch:
                c.commit(batch)
        owned = [c.assignment() for c in cs]
        if all(len(o) == 2 // len(cs) for o in owned) and len(set().union(*owned)) == 2:
            return got
    raise AssertionError("the consumers never shared the partitions")


@pytest.mark.parametrize("mode", ["commit", "iterate"])
def test_late_call_hands_out_and_acks_nothing_it_lost(conn: Connection, mode: str) -> None:
    TopicAdmin(conn).create(TopicSpec(TOPIC, 2))
    auto = mode == "iterate"
    a = consumer(conn, auto_commit=auto, max_poll_interval_ms=1000, fetch_count=10)
    b = consumer(conn, auto_commit=False)
    try:
        assert settle(a, b) == []
        produce(conn, 40)
        it = iter(a) if auto else None
        if it is not None:
            held = next(it)
        else:
            held = wait_for(lambda: a.poll(max_records=1, timeout=0.1), 10, "no record")[0]
        # a's handler is stuck from here on: only b polls, and gets every record, the one in
        # a's hands too (a left the group; its session, 10 s, has not expired).
        seen: list[Record] = []

        def b_has_all() -> bool:
            batch = b.poll(timeout=0.05)
            if batch:
                b.commit(batch)
                seen.extend(batch)
            return len({(r.partition, r.id) for r in seen}) == 40

        start = time.monotonic()
        wait_for(b_has_all, 30, "b did not get every record")
        assert time.monotonic() - start < SESSION_MS / 1000
        assert a.member_id not in members(conn)
        assert (held.partition, held.id) in {(r.partition, r.id) for r in seen}
        assert pending(conn, 2) == 0

        # a's handler returns: the next request raises once and acks nothing.
        with pytest.raises(PollIntervalExceededError, match="max_poll_interval_ms=1000"):
            if it is not None:
                next(it)
            else:
                a.commit([held])
        if not auto:  # a second try is sent, and the fence refuses it
            with pytest.raises(NotOwnerError):
                a.commit([held])
        rejoined = settle(a, b)
        assert rejoined == []  # nothing a lost comes back to anyone: b acked it all
        assert a.refused_acks >= 1
        assert pending(conn, 2) == 0
    finally:
        a.close()
        b.close()


def test_cli_consume_takes_the_interval_from_a_flag_or_the_file(
    conn: Connection, server_url: str, tmp_path: Path
) -> None:
    """A smoke test: the options are accepted with a real server and records flow."""
    TopicAdmin(conn).create(TopicSpec(TOPIC, 2))
    produce(conn, 10)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[consumer]\nmax_poll_interval_ms = 2000\nfetch_count = 3\n")
    base = ["--url", server_url, "--namespace", conn.keys.ns, "consume", TOPIC, "-g", GROUP]
    base += ["--session-timeout-ms", "1000", "--heartbeat-ms", "200", "--config", str(cfg)]
    for extra in ([], ["--max-poll-interval-ms", "1500"]):
        res = CliRunner().invoke(main, [*base, "-n", "5", *extra])
        assert res.exit_code == 0, res.stderr
        assert len(res.stdout.splitlines()) == 5
    assert pending(conn, 2) == 0
