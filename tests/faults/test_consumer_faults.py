"""Consumer-process faults: kill -9 mid-batch (one group, two groups), SIGSTOP past the
session (zombie), churn, a slow handler during a rebalance, a crash-looping poison record,
and partition growth under keyed load with a kill -9.

Workers use the library's defaults; the scenarios that need a member evicted within the
test's time run with a 1 s session (``SHORT_SESSION``) and say so: they are scenarios about
that setting (the default session is 30 s).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.checker import Verdict
from tests.faults.harness import Worker
from tests.faults.scenario import (
    SHORT_SESSION,
    Scenario,
    assert_verdict,
    scenario,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(180)
# The consumer workers' shell: the threaded Consumer, or the AsyncConsumer (worker.py).
SHELLS = pytest.mark.parametrize("shell", ["sync", "async"])


def freeze_mid_batch(*candidates: Worker, timeout: float = 20.0) -> Worker:
    """SIGSTOP one of ``candidates`` at a moment its last logged line is a processed, not yet
    acked record (lines are flushed one by one; frozen, it cannot ack before the caller's
    kill lands); returns it. Several candidates: whichever is caught first (one owning a
    quiet partition gets one-record batches, acked within ~0.1 ms of their line: CI once
    waited 20 s for such a one while the others held batches of dozens)."""
    frozen: list[Worker] = []

    def stopped() -> bool:
        for w in candidates:
            os.kill(w.pid, signal.SIGSTOP)
            evs = w.events()
            if evs and evs[-1]["ev"] == "proc":
                frozen.append(w)
                return True
            os.kill(w.pid, signal.SIGCONT)
        return False

    names = "/".join(w.name for w in candidates)
    wait_for(stopped, timeout, f"{names} to be mid-batch", step=0.003)
    return frozen[0]


def unacked(w: Worker) -> int:
    evs = w.events()
    committed = {i for e in evs if e["ev"] == "ack" for i in e["ids"]}
    return sum(1 for e in evs if e["ev"] == "proc" and e["id"] not in committed)


@scenario("consumer-kill9", soak={"count": 20000, "rate": 2000})
def consumer_kill9(*, count: int = 3000, rate: float = 1500, drain_timeout: float = 60) -> Verdict:
    """A consumer killed with SIGKILL while it holds an unacked batch of keyed records: its
    partitions move after its session (1 s: a scenario about the session setting); the new
    owner redelivers exactly the unacked records, in id order, before any newer one (L,
    strict O; D: duplicates only among the unacked; G: one owner per grant)."""
    with Scenario("consumer-kill9", "kill -9 one of 3 consumers mid-batch") as s:
        members = s.consumers(3, work_ms=2, **SHORT_SESSION)
        s.fleet.producer(count=count, keys=12, rate=rate)
        s.wait_processing(count // 5)
        victim = freeze_mid_batch(*members)
        s.fleet.kill9(victim)
        v = s.finish(drain_timeout=drain_timeout)
        left = unacked(victim)
        s.note(v, f"victim left {left} unacked")
        v.require(left > 0, "the kill did not land mid-batch")
        v.require(v.duplicated > 0, "nothing was redelivered after the kill")
        return v


@SHELLS
def test_consumer_kill9_mid_batch(shell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTSTREAM_FAULT_SHELL", shell)
    assert_verdict(consumer_kill9())


@scenario("two-groups-kill9", soak={"count": 20000, "rate": 2000})
def two_groups_kill9(*, count: int = 3000, rate: float = 1500) -> Verdict:
    """Two groups on one topic, two consumers each; one consumer of each group is killed
    with SIGKILL mid-batch (1 s session: a scenario about that setting). Each group must
    process every record (L per group), in strict order, with one owner per grant."""
    groups = ("fleet", "audit")
    with Scenario("two-groups-kill9", "kill -9 one consumer of each of 2 groups",
                  groups=groups) as s:  # fmt: skip
        members = {g: [s.fleet.consumer(group=g, work_ms=2, **SHORT_SESSION) for _ in range(2)]
                   for g in groups}  # fmt: skip
        s.fleet.wait_ready([w for ws in members.values() for w in ws])
        s.fleet.producer(count=count, keys=12, rate=rate)
        for g in groups:

            def busy(g: str = g) -> bool:
                return s.processed_count(g) >= count // 5

            wait_for(busy, 30, f"{g} processing")
        victims = [members[g][0] for g in groups]
        for w in victims:
            freeze_mid_batch(w)
            s.fleet.kill9(w)
        v = s.finish()
        lefts = [unacked(w) for w in victims]
        s.note(v, f"victims left {lefts} unacked")
        v.require(all(lefts), "a kill did not land mid-batch")
        return v


def test_two_groups_under_consumer_kill9_each_process_everything() -> None:
    assert_verdict(two_groups_kill9())


@scenario("consumer-sigstop", soak={"pause": 6.0})
def consumer_sigstop(*, pause: float = 3.0) -> Verdict:
    """A consumer SIGSTOPped mid-batch for 3 sessions (session 1 s: a scenario about that
    setting), then SIGCONTed: meanwhile its partitions moved; on waking it finishes the
    batch it held, but its commit is refused by the fence and its heartbeat thread rejoins.
    G: it receives nothing new of the moved partitions and none of its late acks is
    accepted; L/O/D hold."""
    with Scenario("consumer-sigstop", f"SIGSTOP {pause:g}s (session 1s), SIGCONT") as s:
        victim, *_ = s.consumers(2, work_ms=5, **SHORT_SESSION)
        s.fleet.producer(count=2500, keys=12, rate=800)
        s.wait_processing(400)
        freeze_mid_batch(victim)
        time.sleep(pause)
        os.kill(victim.pid, signal.SIGCONT)
        v = s.finish()
        refused = [e for e in victim.events() if e["ev"] == "ack" and e["outcome"] == "refused"]
        s.note(v, f"zombie commits refused: {len(refused)}")
        v.require(refused, "the zombie's late commit was not refused")
        v.require(v.zombie_refused > 0, "the checker saw no refused processing")
        return v


@SHELLS
def test_consumer_sigstop_past_session_is_a_fenced_zombie(
    shell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTSTREAM_FAULT_SHELL", shell)
    assert_verdict(consumer_sigstop())


@scenario("rebalance-churn", soak={"seconds": 60, "count": 30000})
def rebalance_churn(*, seconds: float = 20, count: int = 8000) -> Verdict:
    """Members added and removed (graceful SIGTERM and kill -9, alternately) every 1.5 s
    while records flow: 20 s in CI, a minute in the soak. 1 s session (a scenario about
    that setting: a killed member must be evicted within the 1.5 s step). Cooperative
    rebalancing must keep L, G, strict O and D."""
    with Scenario("rebalance-churn", f"add/remove a member every 1.5s, {seconds:.0f}s") as s:
        s.consumers(2, work_ms=1, **SHORT_SESSION)
        s.fleet.producer(count=count, keys=16, rate=count / (seconds + 2))
        ops = ["add", "term", "add", "kill", "add", "term", "add", "kill"]
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            time.sleep(1.5)
            live = s.fleet.live_consumers()
            op = ops[i % len(ops)]
            i += 1
            if (op == "add" and len(live) < 4) or len(live) <= 1:
                s.fleet.consumer(work_ms=1, **SHORT_SESSION)
            elif op == "term":
                s.fleet.terminate(live[0])
            else:
                s.fleet.kill9(live[0])
        v = s.finish()
        s.note(v, f"{len(s.fleet.consumers())} members over the run")
        return v


def test_rebalance_churn() -> None:
    assert_verdict(rebalance_churn())


@scenario("slow-handler-rebalance", soak={"count": 6000})
def slow_handler_rebalance(*, count: int = 2500, rate: float = 250) -> Verdict:
    """A consumer whose handler sleeps 1.2 s per batch, more than half its 2 s session (a
    scenario about the session setting: the default 30 s would need 16 s sleeps), while a
    second member joins: its heartbeats run on their own thread, so it is not evicted; the
    partitions it must give up move only once it comes back to poll and releases them. No
    loss, strict order, one owner per grant."""
    session = {"session_ms": 2000}
    with Scenario("slow-handler-rebalance", "handler sleeps 1.2s (session 2s), member joins") as s:
        slow = s.consumers(1, slow_ms=1200, **session)[0]
        s.fleet.producer(count=count, keys=12, rate=rate)
        wait_for(lambda: any(e["ev"] == "slow_end" for e in slow.events()), 20, "a slow batch")
        wait_for(lambda: slow.events()[-1]["ev"] == "slow", 20, "the slow handler asleep",
                 step=0.01)  # fmt: skip
        fast = s.consumers(1, **session)[0]
        v = s.finish()
        t_join = next(e["t"] for e in fast.events() if e["ev"] == "ready")
        evs = slow.events()
        sleeps = [(e["t0"], e["t0"] + e["ms"] / 1000) for e in evs if e["ev"] == "slow"]
        inside = any(a <= t_join <= b for a, b in sleeps)
        s.note(v, f"joined {'inside' if inside else 'between'} a 1.2 s sleep")
        parts = {w.name: {e["p"] for e in w.events() if e["ev"] == "proc"} for w in (slow, fast)}
        moved = parts[slow.name] & parts[fast.name]
        s.note(v, f"partitions moved from the slow member: {sorted(moved)}")
        v.require(
            sleeps and sleeps[0][0] < t_join < sleeps[-1][1],
            "the member did not join while the handler was slow",
        )
        v.require(moved, "no partition moved to the new member")
        v.require(
            not any(e["ev"] == "error" for e in slow.events()), "the slow member saw an error"
        )
        tokens: dict[int, set[int]] = {}
        for e in evs:
            if e["ev"] == "proc":
                tokens.setdefault(e["p"], set()).add(e["token"])
        regranted = sorted(p for p, ts in tokens.items() if len(ts) > 1)
        v.require(not regranted, f"the slow member was evicted: {regranted} granted again")
        return v


def test_slow_handler_during_a_rebalance() -> None:
    assert_verdict(slow_handler_rebalance())


@scenario("poison-crash-loop",
          soak={"records": 1000, "fetch_count": 500})  # fmt: skip
def poison_crash_loop(*, records: int = 100, fetch_count: int = 100, restarts: int = 8) -> Verdict:
    """One partition, 100 keyed records; the consumer (fetch_count=100) SIGKILLs itself
    each time it handles the poison record #1, and is restarted each time (up to 8
    restarts; 1 s session, a scenario about that setting). Expected: the poison record ends
    in the dead-letter stream (max_deliveries), at most with the record handed out before it
    in the same batch (#0: its ack died with the process each time); all other records are
    processed, none dead-lettered."""
    with Scenario("poison-crash-loop", "handler kill -9s itself on record #1",
                  partitions=1) as s:  # fmt: skip
        prod = s.fleet.producer(count=records, keys=10, rate=5000)
        prod.popen.wait(timeout=60)
        sent = {(e["key"], e["seq"]): e["id"] for e in prod.events() if e.get("ok")}
        poison, first = sent.get(("k1", 1)), sent.get(("k0", 1))
        lives: list[Worker] = []
        converged = False
        for _ in range(restarts + 1):
            w = s.fleet.consumer(poison="k1#1", fetch_count=fetch_count, **SHORT_SESSION)
            lives.append(w)

            def settled(w: Worker = w) -> bool:
                if not w.alive():
                    return True
                try:
                    return s.lag() == 0
                except Exception:
                    return False

            wait_for(settled, 60, f"{w.name} to die on the poison or drain", step=0.1)
            if w.alive():
                converged = True
                break
            w.stopped = True
            if any(e["ev"] == "poison" for e in w.events()):
                w.expected_exit = (-signal.SIGKILL,)
        v = s.finish(
            expected_dead={(0, poison): "max_deliveries"} if poison else {},
            may_dead={(0, first): "max_deliveries"} if first else {},
        )
        deaths = sum(1 for w in lives if any(e["ev"] == "poison" for e in w.events()))
        s.note(v, f"{deaths} self-kills, {len(lives)} lives")
        v.require(poison and first, "the producer did not acknowledge records #0 and #1")
        v.require(converged, f"still crash-looping after {restarts} restarts")
        dead = {(d.p, d.id) for d in s.dead_letters()}
        v.require((0, poison) in dead, "the poison record is not in the dead-letter stream")
        return v


@SHELLS
def test_crash_looping_poison_record_is_dead_lettered_alone(
    shell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTSTREAM_FAULT_SHELL", shell)
    assert_verdict(poison_crash_loop())


@scenario("partition-growth", soak={"seconds": 90})
def partition_growth(*, seconds: float = 45, rate: float = 200) -> Verdict:
    """A keyed topic grows from 4 to 8 partitions (``TopicAdmin.alter(partitions=8)``)
    under load with three consumer processes, then one consumer is killed with SIGKILL mid-
    batch (1 s session: a scenario about that setting). Producers and consumers pick the new
    count up by their default metadata refresh (30 s), so the load lasts 45 s. With modulo
    routing a key moves unless ``h % 4 == h % 8``; router.py promises a moved key's order
    across the change only once the old partition drained, so: keys that stayed are checked
    with strict O across the run, keys that moved with strict O within each partition; L,
    G and D as always."""
    with Scenario("partition-growth", "grow 4->8 under keyed load, kill -9 one of 3") as s:
        victim, *_ = s.consumers(3, work_ms=1, **SHORT_SESSION)
        count = int(seconds * rate)
        prod = s.fleet.producer(count=count, keys=24, rate=rate)
        s.wait_processing(200)
        from partitions._admin.topics import TopicAdmin
        from tests.faults.scenario import TOPIC

        TopicAdmin(s.conn()).alter(TOPIC, partitions=8)

        def new_partitions_flow() -> bool:
            return any(e["ev"] == "proc" and e["p"] >= 4 for w in s.fleet.consumers()
                       for e in w.events())  # fmt: skip

        wait_for(new_partitions_flow, 60, "records of the new partitions processed", step=0.5)
        freeze_mid_batch(victim)
        s.fleet.kill9(victim)
        prod.popen.wait(timeout=seconds + 60)
        parts: dict[str, set[int]] = {}
        for e in prod.events():
            if e.get("ok"):
                parts.setdefault(e["key"], set()).add(e["p"])
        moved = {k for k, ps in parts.items() if len(ps) > 1}
        v = s.finish(moved_keys=moved)
        s.note(v, f"{len(moved)} of {len(parts)} keys moved; victim left {unacked(victim)} unacked")
        v.require(moved and len(moved) < len(parts), "growth moved no key, or every key")
        v.require(s.topic_partitions() == 8, "the topic did not grow")
        return v


def test_partition_growth_under_keyed_load_with_a_kill9() -> None:
    assert_verdict(partition_growth())
