"""Network faults through :class:`~tests.faults.proxy.FaultProxy`: latency, a black hole in
both directions, and replies lost while requests execute (a producer retrying after a
timeout). The harness's own connection goes direct to the server."""

from __future__ import annotations

import time

import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.scenario import Scenario

pytestmark = pytest.mark.timeout(90)


def test_latency() -> None:
    """40 ms added to every chunk both ways for 3 s (heartbeats, reads, appends): slower,
    nothing else; L, G, O, D hold."""
    with Scenario("proxy-latency", "+40ms per chunk for 3s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2, work_ms=1, url=proxy.url, socket_timeout=2)
            s.fleet.producer(count=2000, keys=12, rate=700, url=proxy.url, socket_timeout=2)
            s.wait_processing(300)
            proxy.latency(40)
            time.sleep(3)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        assert v.ok, v.details


def test_blackhole_both_directions() -> None:
    """Every connection black-holed for 3 s (socket timeout 1.5 s, session 1 s): clients time
    out, sessions expire on the server, in-doubt appends are retried with their sequence
    numbers; after healing, members rejoin under new grants. L, G, O, D hold."""
    with Scenario("proxy-blackhole", "black hole both ways 3s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2, work_ms=1, url=proxy.url, socket_timeout=1.5)
            s.fleet.producer(count=2500, keys=12, rate=600, url=proxy.url, socket_timeout=1.5)
            s.wait_processing(300)
            proxy.blackhole("both")
            time.sleep(3)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        s.note(v, f"{proxy.connections} proxied connections")
        assert v.ok, v.details


def test_producer_retry_after_timeout_makes_no_duplicates() -> None:
    """Replies from the server black-holed for 2.5 s while the producer's appends execute
    (socket timeout 1 s): every batch times out in doubt and is retried with the same
    producer id and sequence; append.lua drops the already-appended ones. No (key, seq)
    appears twice, order holds. These servers have no IDMP (Redis 8.6+), so this is the
    fallback's proof."""
    with Scenario("producer-retry-timeout", "replies black-holed 2.5s (proxy)") as s:
        proxy = FaultProxy(s.server.port)
        try:
            s.consumers(2, work_ms=0)
            prod = s.fleet.producer(
                count=2500, keys=12, rate=800, url=proxy.url, socket_timeout=1, retries=100
            )
            s.wait_processing(300)
            proxy.blackhole("down")
            time.sleep(2.5)
            proxy.heal()
            v = s.finish()
        finally:
            proxy.close()
        ready = next(e for e in prod.events() if e["ev"] == "ready")
        s.note(v, f"IDMP={'yes' if ready['idmp'] else 'no (seq fallback)'}")
        s.note(v, f"{proxy.connections} proxied connections")
        assert proxy.connections > 1, "the producer never timed out and reconnected"
        assert v.ok and v.in_doubt == 0, v.details
