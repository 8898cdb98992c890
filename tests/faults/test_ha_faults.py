"""High-availability faults: a primary killed -9 and its replica promoted (behind three
Sentinels, or in a cluster with a replica per master), and a network partition that isolates
one consumer. Real processes, started and stopped by pid (see :mod:`tests.faults.replicated`).

Workers use the library's defaults (a 30 s session outlives a failover of a few seconds, so
members resume rather than rejoin), except the setting a scenario is about: ``acks``.

* acks="all" (producer and group): nothing acknowledged is lost, per-key order and one owner
  hold, no record is redelivered after its accepted ack, no batch is appended twice, no send
  fails (the default producer rides the failover out).
* acks=1: the same run, measured: how many acknowledged records the old primary took with it
  (``acked_but_gone``), in the verdict table. Redis replication is asynchronous: an
  acknowledged write the replica never got is gone after a failover (Jepsen, 2013).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checker import Verdict
from tests.faults.proxy import FaultProxy
from tests.faults.replicated import ReplicatedScenario, acked_but_gone
from tests.faults.scenario import SHORT_SESSION, TOPIC, Scenario, assert_verdict, scenario
from tests.helpers import layout, wait_for

pytestmark = pytest.mark.timeout(240)

# One producer process (the checker identifies a send by key and per-key sequence, which two
# worker processes would share) at this rate, so that the failover lands mid-stream.
RATE = 800
COUNT = 8000


def _acked_within(s: Scenario, t_kill: float, window: float) -> tuple[int, int]:
    """(sends, consumer acks) acknowledged in the ``window`` seconds before the kill."""
    sends = sum(1 for e in s.events("produce") if e.get("ok") and e["t"] > t_kill - window)
    acks = sum(
        len(e["ids"])
        for e in s.events("consume")
        if e["ev"] == "ack" and e["outcome"] == "ok" and e["t"] > t_kill - window
    )
    return sends, acks


def _failover(
    s: ReplicatedScenario,
    acks: str,
    key: str | None = None,
    rate: float = RATE,
    count: int = COUNT,
) -> tuple[float, float]:
    """Two consumers, a producer; kill the primary (of ``key`` on a cluster) mid-stream, then
    bring the dead node back, as a replica of the promoted one (until it is back the promoted
    primary has no replica: acks="all" cannot be met, so appends wait, as Kafka's do below
    min.insync.replicas). Returns (time of the kill, seconds until the promotion)."""
    s.consumers(2, work_ms=1, group_acks=acks)
    s.fleet.producer(count=count, keys=12, rate=rate, acks=acks)
    s.wait_processing(2000, timeout=60)
    t_kill = time.time()
    _, took = s.kill_primary(key)
    s.restart_killed()
    return t_kill, took


def failover_acks_all(kind: str) -> Verdict:
    """kill -9 of a primary under load, replica promoted (Sentinel / cluster failover), with
    acks="all" for the producer and the group: every acknowledged send survives and is
    processed, order and one-owner hold, no redelivery after an accepted ack, no duplicate
    append, no failed send. Producer and consumers follow the failover with no code of their
    own."""
    name = f"{kind}-failover-acks-all"
    with ReplicatedScenario(name, f"{kind}: primary kill -9, acks=all", kind=kind) as s:
        key = s.conn().keys.stream(layout(s.conn(), TOPIC), 0) if kind == "cluster" else None
        _, took = _failover(s, "all", key)
        gone = acked_but_gone(s)
        v = s.finish(drain_timeout=90)
        s.note(v, f"promoted in {took:.1f}s; acknowledged but gone: {len(gone)}")
        v.require(not gone, f"acknowledged with acks=all, gone after the failover: {gone[:5]}")
        return v


for _kind in ("sentinel", "cluster"):
    scenario(f"{_kind}-failover-acks-all")(lambda _k=_kind: failover_acks_all(_k))


@pytest.mark.parametrize("kind", ["sentinel", "cluster"])
def test_failover_with_acks_all_loses_nothing(kind: str) -> None:
    assert_verdict(failover_acks_all(kind))


@scenario("sentinel-failover-acks-1", soak={"rate": 3000, "count": 30000})
def failover_acks_1(rate: float = RATE, count: int = COUNT) -> Verdict:
    """The same Sentinel failover with acks=1 (the default) for producer and group: what the
    old primary acknowledged but never sent to its replica is lost. The loss is measured (the
    acknowledged sends the promoted primary does not have) and reported; it must stay within
    what was acknowledged in the last second before the kill, and order and one-owner still
    hold. Redeliveries after an accepted ack are bounded by the acks of that second (an ack
    can be lost like any write); so are sends that fail (the producer's next batch finds its
    sequence lost on the new primary: OUTOFSEQ, loud) and appends that repeat one the old
    primary took with it."""
    with ReplicatedScenario("sentinel-failover-acks-1", "sentinel: primary kill -9, acks=1") as s:
        t_kill, took = _failover(s, "1", rate=rate, count=count)
        gone = acked_but_gone(s)
        recent_sends, recent_acks = _acked_within(s, t_kill, 1.0)
        produced = sum(1 for e in s.events("produce") if e.get("ok"))
        v = s.finish(
            drain_timeout=90,
            allowed_loss=len(gone),
            allowed_duplicate_violations=recent_acks,
            allowed_in_doubt=recent_sends,
            allowed_duplicate_appends=recent_sends,
        )
        s.note(v, f"acks=1 lost {len(gone)} of {produced} acknowledged ({took:.1f}s failover)")
        print(f"acks=1 failover loss: {len(gone)} acknowledged records of {produced}")
        v.require(len(gone) <= recent_sends, f"lost {len(gone)} > {recent_sends} acked in 1 s")
        v.require(v.lost <= len(gone), f"the checker lost {v.lost} > {len(gone)} gone")
        return v


def test_sentinel_failover_with_acks_1_loss_is_measured() -> None:
    assert_verdict(failover_acks_1())


@scenario("partition-one-consumer")
def partition_one_consumer() -> Verdict:
    """One consumer's connections go through a fault proxy, the other's direct. The proxy
    black-holes both ways for 3 s (a 1 s session: the scenario is about eviction): the
    isolated member stops handing out records once its session may have expired, the other
    takes its partitions over, and after healing the isolated member's late commit is refused
    by the fence and it rejoins. L, O, G, D hold."""
    with Scenario("partition-one-consumer", "black hole one consumer 3s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            isolated = s.fleet.consumer(work_ms=4, url=proxy.url, socket_timeout=1.5,
                                        **SHORT_SESSION)  # fmt: skip
            other = s.fleet.consumer(work_ms=1, **SHORT_SESSION)
            s.fleet.wait_ready([isolated, other])
            s.fleet.producer(count=3000, keys=12, rate=700)
            s.wait_processing(400)

            def mid_batch() -> bool:
                evs = isolated.events()
                return bool(evs) and evs[-1]["ev"] == "proc"

            wait_for(mid_batch, 15, "the isolated consumer mid-batch", step=0.002)
            t_cut = time.time()
            proxy.blackhole("both")
            time.sleep(3.0)
            t_heal = time.time()
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        session = SHORT_SESSION["session_ms"] / 1000
        late = [
            e
            for e in isolated.events()
            if e["ev"] == "proc" and t_cut + session + 0.1 < e["t1"] < t_heal
        ]
        took_over = {
            e["p"] for e in other.events() if e["ev"] == "proc" and t_cut < e["t"] < t_heal + 1
        }
        refused = [e for e in isolated.events() if e["ev"] == "ack" and e["outcome"] == "refused"]
        s.note(v, f"{len(refused)} late commit(s) refused, other took {sorted(took_over)}")
        v.require(not late, f"handed out after its session may have expired: {late[:3]}")
        v.require(len(took_over) == s.partitions, f"the other took only {sorted(took_over)}")
        return v


def test_partition_isolating_one_consumer() -> None:
    assert_verdict(partition_one_consumer())
