"""Network faults through :class:`~tests.faults.proxy.FaultProxy`: latency, a black hole in
both directions, and replies lost while requests execute (a producer retrying after a
timeout). The harness's own connection goes direct to the server.

Workers use the library's defaults, except where a scenario is about a setting and says so:
the black holes need a socket timeout below their length (and, for the sessions to expire,
a 1 s session), else nothing times out.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checker import Verdict
from tests.faults.proxy import FaultProxy
from tests.faults.scenario import SHORT_SESSION, Scenario, assert_verdict, scenario

pytestmark = pytest.mark.timeout(150)


@scenario("proxy-latency", soak={"seconds": 10.0})
def proxy_latency(*, seconds: float = 3.0) -> Verdict:
    """40 ms added to every chunk both ways for 3 s (heartbeats, reads, appends), default
    settings: slower, nothing else; L, G, O, D hold and no send fails."""
    with Scenario("proxy-latency", f"+40ms per chunk for {seconds:g}s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2, work_ms=1, url=proxy.url)
            s.fleet.producer(count=2000, keys=12, rate=700, url=proxy.url)
            s.wait_processing(300)
            proxy.latency(40)
            time.sleep(seconds)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        return v


def test_latency() -> None:
    assert_verdict(proxy_latency())


@scenario("proxy-blackhole", soak={"seconds": 6.0})
def proxy_blackhole(*, seconds: float = 3.0) -> Verdict:
    """Every connection black-holed for 3 s (a scenario about the socket timeout, 1.5 s,
    and the session, 1 s): clients time out, sessions expire on the server, in-doubt
    appends are retried with their sequence numbers; after healing, members rejoin under new
    grants. L, G, O, D hold; no send fails (the default producer rides out 3 s)."""
    with Scenario("proxy-blackhole", f"black hole both ways {seconds:g}s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2, work_ms=1, url=proxy.url, socket_timeout=1.5, **SHORT_SESSION)
            s.fleet.producer(count=2500, keys=12, rate=600, url=proxy.url, socket_timeout=1.5)
            s.wait_processing(300)
            proxy.blackhole("both")
            time.sleep(seconds)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        s.note(v, f"{proxy.connections} proxied connections")
        return v


def test_blackhole_both_directions() -> None:
    assert_verdict(proxy_blackhole())


@scenario("producer-retry-timeout", soak={"seconds": 4.0})
def producer_retry_timeout(*, seconds: float = 2.5) -> Verdict:
    """Replies from the server black-holed for 2.5 s while the producer's appends execute
    (a scenario about the socket timeout: 1 s): every batch times out in doubt and is
    retried with the same producer id and sequence; append.lua drops the already-appended
    ones. No (key, seq) appears twice, order holds, no send fails. These servers have no
    IDMP (Redis 8.6+), so this is the fallback's proof."""
    with Scenario("producer-retry-timeout", f"replies black-holed {seconds:g}s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2)
            prod = s.fleet.producer(count=2500, keys=12, rate=800, url=proxy.url, socket_timeout=1)
            s.wait_processing(300)
            proxy.blackhole("down")
            time.sleep(seconds)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        ready = next(e for e in prod.events() if e["ev"] == "ready")
        s.note(v, f"IDMP={'yes' if ready['idmp'] else 'no (seq fallback)'}")
        s.note(v, f"{proxy.connections} proxied connections")
        v.require(proxy.connections > 1, "the producer never timed out and reconnected")
        return v


def test_producer_retry_after_timeout_makes_no_duplicates() -> None:
    assert_verdict(producer_retry_timeout())
