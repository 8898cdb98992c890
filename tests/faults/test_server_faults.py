"""Server faults: kill -9 with AOF always / everysec, restart empty, CLIENT KILL, CLIENT PAUSE
WRITE, and the server SIGSTOPped past the session timeout. Each test owns its server.

Producers and consumers use the library's defaults; the scenarios that need sessions to
expire within the test's time (CLIENT PAUSE, server SIGSTOP) run with a 1 s session and say
so. A server restart keeps the server down for 2 s (a process restart and AOF load on a
real host takes seconds); DESIGN says the default producer rides that out.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.checker import Verdict
from tests.faults.scenario import (
    GROUP,
    SHORT_SESSION,
    TOPIC,
    Scenario,
    assert_verdict,
    scenario,
)
from tests.helpers import layout

pytestmark = pytest.mark.timeout(150)


def groups_on(s: Scenario) -> dict[int, list[dict[str, object]]]:
    """Per partition, XINFO GROUPS of its stream ([] when the stream is gone)."""
    r = s.server.client(decode_responses=True)
    out = {}
    for p in range(s.partitions):
        # (the layout its creation chose: after a restart empty there is no metadata to read)
        key = s.conn().keys.stream(layout(s.conn(), TOPIC, s.partitions), p)
        out[p] = r.xinfo_groups(key) if r.exists(key) else []
    r.close()
    return out


def pending(s: Scenario) -> dict[int, int]:
    """Per partition, the group's pending count (XPENDING summary)."""
    r = s.server.client()
    try:
        keys = s.conn().keys
        lay = layout(s.conn(), TOPIC)
        return {p: r.xpending(keys.stream(lay, p), GROUP)["pending"] for p in range(s.partitions)}
    finally:
        r.close()


def kill_and_restart(s: Scenario, down: float = 2.0) -> float:
    """kill -9 the server, keep it down ``down`` s, restart it on the same port and dir."""
    t = time.time()
    s.server.kill9()
    time.sleep(down)
    s.server.start()
    s.reconnect()
    return t


def server_kill9_always(binary: str) -> Verdict:
    """kill -9 of the server under load, down 2 s, restart from its AOF (appendfsync
    always): every acknowledged send and every accepted ack survived, the group and its
    pending entries are intact (no StateLostError), producers' retries are deduplicated, and
    no send fails (the default producer rides out the restart)."""
    name = f"server-kill9-always-{binary}"
    with Scenario(name, "server kill -9 (down 2s), AOF always", binary=binary) as s:
        s.consumers(2, work_ms=1)
        s.fleet.producer(count=3000, keys=12, rate=1000)
        s.wait_processing(800)
        kill_and_restart(s)
        v_groups = all(groups_on(s).values())
        v = s.finish()
        lost_state = [e for e in s.events("consume") if e.get("type") == "StateLostError"]
        v.require(v_groups, "the group vanished with AOF always")
        v.require(not lost_state, f"StateLostError after an AOF-always restart: {lost_state[:2]}")
        return v


for _binary in ("valkey", "redis7"):
    scenario(f"server-kill9-always-{_binary}")(lambda _b=_binary: server_kill9_always(_b))


@pytest.mark.parametrize("binary", ["valkey", "redis7"])
def test_server_kill9_aof_always_loses_nothing(binary: str) -> None:
    assert_verdict(server_kill9_always(binary))


@scenario("server-kill9-everysec")
def server_kill9_everysec() -> Verdict:
    """kill -9 with appendfsync everysec: up to ~1 s of acknowledged writes may be lost.
    The loss must be bounded (only sends acked in the last 2 s before the kill) and
    reported, and the group must not be silently reset (no mass redelivery, no group
    re-created at 0 or $): redelivered-after-ack is bounded by the acks of that window."""
    with Scenario(
        "server-kill9-everysec", "server kill -9 (down 2s), AOF everysec", persistence="everysec"
    ) as s:
        s.consumers(2, work_ms=1)
        s.fleet.producer(count=3000, keys=12, rate=1000)
        s.wait_processing(800)
        t_kill = kill_and_restart(s)
        kept = all(groups_on(s).values())
        window = 2.0
        v0 = s.events("produce")
        recent_sends = sum(1 for e in v0 if e.get("ok") and e["t"] > t_kill - window)
        recent_acks = sum(
            len(e["ids"])
            for e in s.events("consume")
            if e["ev"] == "ack" and e["outcome"] == "ok" and e["t"] > t_kill - window
        )
        v = s.finish(allowed_loss=recent_sends, allowed_duplicate_violations=recent_acks)
        s.note(v, f"lost {v.lost} of {recent_sends} sends acked in the last {window:.0f}s")
        v.require(kept, "the group vanished")
        return v


def test_server_kill9_aof_everysec_bounded_and_reported() -> None:
    assert_verdict(server_kill9_everysec())


@scenario("server-restart-empty")
def server_restart_empty() -> Verdict:
    """The server restarts with no persistence: every live consumer fails with
    StateLostError (typed, loud; exit code 3) instead of silently re-creating the group at 0
    (duplicates) or $ (loss); no consumer group is re-created on the partitions. Everything
    was lost by the fault itself, so loss is not counted here; sends may fail after the
    restart (the producer's sequences are gone: OUTOFSEQ), bounded by the sends that were
    not yet acknowledged at the kill, and reported."""
    with Scenario("server-restart-empty", "server kill -9, restart empty", persistence="none") as s:
        consumers = s.consumers(2, work_ms=1)
        prod = s.fleet.producer(count=2000, keys=8, rate=1000)
        s.wait_processing(400)
        acked_at_kill = sum(1 for e in prod.events() if e.get("ok"))
        kill_and_restart(s, down=0.5)
        for w in consumers:
            w.popen.wait(timeout=30)
            w.expected_exit = (3,)
            w.stopped = True
        errors = {w.name: [e for e in w.events() if e["ev"] == "error"] for w in consumers}
        typed = [
            n for n, errs in errors.items() if any(e["type"] == "StateLostError" for e in errs)
        ]
        regrouped = {p: g for p, g in groups_on(s).items() if g}
        prod.popen.wait(timeout=60)
        v = s.finish(drain=False, allowed_loss=10**9, allowed_in_doubt=2000 - acked_at_kill)
        s.note(v, f"StateLostError in {len(typed)}/{len(consumers)} consumers")
        s.note(v, f"groups re-created: {len(regrouped)}; {v.in_doubt} sends failed")
        v.require(len(typed) == len(consumers), f"not every consumer failed loudly: {errors}")
        v.require(not regrouped, f"stream groups re-created: {regrouped}")
        return v


def test_server_restarted_empty_is_a_loud_typed_error() -> None:
    assert_verdict(server_restart_empty())


@scenario("client-kill")
def client_kill() -> Verdict:
    """CLIENT KILL of every client connection (producer, consumers, heartbeats, blocked
    reads) three times under load: clients reconnect; retried batches are deduplicated; no
    loss, order kept, duplicates only among unacked records."""
    with Scenario("client-kill", "CLIENT KILL TYPE normal x3") as s:
        s.consumers(2, work_ms=1)
        s.fleet.producer(count=3000, keys=12, rate=1000)
        s.wait_processing(300)
        killed = 0
        r = s.server.client()
        for _ in range(3):
            killed += int(r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            time.sleep(0.7)
        r.close()
        v = s.finish()
        s.note(v, f"{killed} connections killed")
        v.require(killed >= 3, "CLIENT KILL killed fewer than 3 connections")
        return v


def test_client_kill_of_producer_and_consumer_connections() -> None:
    assert_verdict(client_kill())


@scenario("client-pause-write")
def client_pause_write() -> Verdict:
    """CLIENT PAUSE WRITE for 3 s (3 sessions of 1 s: a scenario about the session setting):
    appends, reads (XREADGROUP writes) and heartbeats stall; after it the coordinator evicts
    and reassigns; L, G, O, D hold and no send fails (the producer waits, it is not
    refused)."""
    with Scenario("client-pause-write", "CLIENT PAUSE 3000 WRITE") as s:
        s.consumers(2, work_ms=1, **SHORT_SESSION)
        s.fleet.producer(count=3000, keys=12, rate=800)
        s.wait_processing(500)
        r = s.server.client()
        r.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        r.close()
        time.sleep(3.0)
        return s.finish()


def test_client_pause_write() -> None:
    assert_verdict(client_pause_write())


@scenario("server-sigstop")
def server_sigstop() -> Verdict:
    """The server SIGSTOPped for 2.5 s (session 1 s: a scenario about the session setting),
    then SIGCONTed: clients wait (default socket timeout 10 s), then sessions look expired
    to the server's clock; members are evicted, rejoin, and partitions move under fencing.
    L, G, O, D hold."""
    with Scenario("server-sigstop", "server SIGSTOP 2.5s (session 1s)") as s:
        s.consumers(2, work_ms=1, **SHORT_SESSION)
        s.fleet.producer(count=3000, keys=12, rate=800)
        s.wait_processing(500)
        s.server.signal(signal.SIGSTOP)
        try:
            time.sleep(2.5)
        finally:
            s.server.signal(signal.SIGCONT)
        return s.finish()


def test_server_sigstop_longer_than_the_session() -> None:
    assert_verdict(server_sigstop())


@scenario("pending-survives")
def pending_survives() -> Verdict:
    """With AOF always, a group's pending entries (read, not acked) survive a kill -9
    restart: XPENDING is the same before and after; the next consumer processes them (1 s
    session, a scenario about that setting: the killed member must be evicted first)."""
    with Scenario("pending-survives", "server kill -9 with pending, AOF always") as s:
        w = s.fleet.consumer(work_ms=50, **SHORT_SESSION)
        s.fleet.wait_ready([w])
        s.fleet.producer(count=200, keys=4, rate=2000)
        s.wait_processing(5)
        s.fleet.kill9(w)  # leaves a pending batch
        r = s.server.client()
        before = {
            p: r.xpending(s.conn().keys.stream(layout(s.conn(), TOPIC), p), GROUP)["pending"]
            for p in range(s.partitions)
        }
        r.close()
        kill_and_restart(s)
        r = s.server.client()
        after = {
            p: r.xpending(s.conn().keys.stream(layout(s.conn(), TOPIC), p), GROUP)["pending"]
            for p in range(s.partitions)
        }
        r.close()
        s.consumers(1, **SHORT_SESSION)
        v = s.finish()
        s.note(v, f"pending before/after restart: {sum(before.values())}/{sum(after.values())}")
        v.require(sum(before.values()) > 0, "nothing was pending at the restart")
        v.require(before == after, f"pending entries changed: {before} -> {after}")
        return v


def test_group_survives_restart_with_pending_entries() -> None:
    assert_verdict(pending_survives())


def test_restart_empty_noticed_by_the_heartbeat_is_still_a_loud_error() -> None:
    """The deterministic form of the race above, in-process: the server restarts empty and
    the consumer does not read until its heartbeat thread has noticed. The rejoin must not
    re-create the group (member.lua refuses: STATE_LOST for a member that was in it); the
    next poll raises StateLostError, and no stream group was re-created."""
    from partitions._base.errors import ConnectionFailedError, StateLostError
    from partitions._base.settings import GroupSettings
    from partitions._client.config import ConsumerConfig
    from partitions._consumer.consumer import Consumer
    from partitions._producer.producer import Producer
    from tests.helpers import wait_for

    with Scenario("restart-empty-rejoined", "restart empty, heartbeat rejoins first",
                  persistence="none") as s:  # fmt: skip
        with Producer(s.conn()) as prod:
            for i in range(20):
                prod.send(TOPIC, b"x", key=f"k{i}")
        settings = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200)
        cfg = ConsumerConfig(auto_commit=True, block_ms=100)
        c = Consumer(GROUP, TOPIC, conn=s.conn(), config=cfg, group_settings=settings)
        try:
            got = 0
            end = time.monotonic() + 10
            while got < 20 and time.monotonic() < end:
                got += len(c.poll(timeout=0.2))
            assert got == 20
            c.poll(timeout=0.1)  # commits
            before = c._runner.owned()
            s.server.kill9()
            s.server.start()
            wait_for(
                lambda: c._runner.fatal is not None and not c._runner.owned(),
                10,
                "the heartbeat thread to find the group gone",
            )
            assert before
            raised = None
            for _ in range(10):
                try:
                    c.poll(timeout=0.2)
                except ConnectionFailedError:
                    continue  # the blocking connection died with the server: retriable
                except StateLostError as err:
                    raised = err
                    break
            assert raised is not None, "the consumer went on silently after the state loss"
            assert not any(groups_on(s).values()), "a stream group was silently re-created"
        finally:
            c._runner.close(leave=False)
