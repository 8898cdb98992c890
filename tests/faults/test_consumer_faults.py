"""Consumer-process faults: kill -9 mid-batch, SIGSTOP past the session (zombie), churn."""

from __future__ import annotations

import pytest

from tests.faults.harness import wait_for
from tests.faults.scenario import Scenario

pytestmark = pytest.mark.timeout(90)


def test_consumer_kill9_mid_batch() -> None:
    """A consumer killed with SIGKILL while it holds an unacked batch: its partitions move
    after the session; the new owner redelivers exactly the unacked records, in id order
    (L, O; D: duplicates only among the unacked; G: one owner per grant)."""
    with Scenario("consumer-kill9", "kill -9 one of 3 consumers mid-batch") as s:
        victim, *_ = s.consumers(3, work_ms=2)
        s.fleet.producer(count=3000, keys=12, rate=1500)
        s.wait_processing(600)

        def mid_batch() -> bool:  # its last logged line is a processed, not yet acked record
            evs = victim.events()
            return bool(evs) and evs[-1]["ev"] == "proc"

        wait_for(mid_batch, 10, "the victim to be mid-batch", step=0.001)
        s.fleet.kill9(victim)
        v = s.finish()
        evs = victim.events()
        committed = {i for e in evs if e["ev"] == "ack" for i in e["ids"]}
        unacked = sum(1 for e in evs if e["ev"] == "proc" and e["id"] not in committed)
        s.note(v, f"victim left {unacked} unacked")
        assert unacked > 0, "the kill did not land mid-batch"
        assert v.duplicated > 0 and v.ok, v.details
