"""Producer-side faults: the producer process killed with SIGKILL mid-batch and restarted,
and a server out of memory (maxmemory + noeviction) that frees memory later.

Producers use ``ProducerConfig()``: what the defaults promise is what is tested.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.checker import Verdict
from tests.faults.scenario import Scenario, assert_verdict, scenario
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(180)


@scenario("producer-kill9", soak={"count": 30000, "rate": 3000})
def producer_kill9(*, count: int = 6000, rate: float = 2000) -> Verdict:
    """The producer is killed with SIGKILL while a batch is on the wire: the server is
    frozen (SIGSTOP, 0.3 s) so the producer's appends wait for their replies, the producer
    is killed, the server resumes and executes what it had received. The producer is then
    restarted the way an application would: it resends every record it never saw
    acknowledged. What was acknowledged before the kill is all processed (L); the only
    duplicates are the records appended whose acknowledgement died with the process, at
    most the sends in flight at the kill (bounded and reported)."""
    with Scenario("producer-kill9", "producer kill -9 mid-batch, restarted") as s:
        s.consumers(2)
        first = s.fleet.producer(count=count, keys=12, rate=rate, log_issue=True)
        wait_for(lambda: sum(1 for e in first.events() if e["ev"] == "sent") >= count // 3,
                 30, "a third acknowledged")  # fmt: skip
        s.server.signal(signal.SIGSTOP)
        try:
            time.sleep(0.3)  # the sender's pipeline is written and waits for its replies
            s.fleet.kill9(first)
        finally:
            s.server.signal(signal.SIGCONT)
        evs = first.events()
        issued = sum(1 for e in evs if e["ev"] == "issue")
        acked = sum(1 for e in evs if e["ev"] == "sent" and e["ok"])
        bound = issued - acked
        s.fleet.producer(count=count, keys=12, rate=rate * 2, resume_from=first.log)
        v = s.finish(expected_count=count, allowed_duplicate_appends=bound)
        s.note(v, f"{v.duplicate_appends} duplicates of {bound} sends in flight at the kill")
        v.require(bound > 0, "the kill did not land while sends were in flight")
        return v


def test_producer_kill9_mid_batch() -> None:
    assert_verdict(producer_kill9())


def oom_errors(s: Scenario) -> int:
    r = s.server.client(decode_responses=True)
    try:
        stats = r.info("errorstats")
    finally:
        r.close()
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


@scenario("server-oom", soak={"hold": 10.0})
def server_oom(*, hold: float = 3.0) -> Verdict:
    """A server with maxmemory 6 MB and noeviction; the producer (1 KB values) runs into
    OOM; after ``hold`` seconds the operator frees memory (CONFIG SET maxmemory 0). Nothing
    acknowledged is lost, consumers can still drain, and with the default producer no send
    fails: OOM is retriable and the failure budget is a time (DESIGN: Producer)."""
    with Scenario("server-oom", f"maxmemory 6mb noeviction, freed after {hold:.0f}s",
                  maxmemory="6mb") as s:  # fmt: skip
        s.consumers(2)
        s.fleet.producer(count=8000, keys=12, rate=2000, value_bytes=1000)
        wait_for(lambda: oom_errors(s) > 0, 30, "the server to refuse writes with OOM", step=0.1)
        t_oom = time.monotonic()
        time.sleep(hold)
        r = s.server.client()
        try:
            r.config_set("maxmemory", "0")
        finally:
            r.close()
        held = time.monotonic() - t_oom
        v = s.finish()
        s.note(v, f"{oom_errors(s)} OOM replies; memory freed after {held:.1f}s of OOM")
        v.require(v.processed >= v.produced, "the consumers did not drain")
        return v


def test_server_oom_then_memory_freed() -> None:
    assert_verdict(server_oom())
