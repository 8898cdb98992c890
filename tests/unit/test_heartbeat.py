"""Heartbeat timing with a fake clock (no server)."""

from __future__ import annotations

import pytest

from coordinator.heartbeat import Heartbeat


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_due_after_interval(clock: FakeClock) -> None:
    hb = Heartbeat(200, 1000, clock=clock)
    hb.reset()
    assert not hb.should_send()
    assert hb.time_to_next() == pytest.approx(0.2)
    clock.now += 0.15
    assert hb.time_to_next() == pytest.approx(0.05)
    clock.now += 0.05
    assert hb.should_send()


def test_never_sent_is_due_now(clock: FakeClock) -> None:
    assert Heartbeat(200, 1000, clock=clock).should_send()


def test_session_counts_from_the_last_successful_send(clock: FakeClock) -> None:
    hb = Heartbeat(200, 1000, clock=clock)
    hb.reset()
    clock.now += 0.2
    hb.sent()
    clock.now += 0.5  # a slow reply: the server stamped it somewhere in these 0.5 s
    hb.succeeded()
    assert hb.session_deadline() == pytest.approx(1000.2 + 1.0)
    clock.now = 1001.19
    assert not hb.session_expired()
    assert hb.session_expired(margin=0.05)
    clock.now = 1001.2
    assert hb.session_expired()


def test_failures_do_not_extend_the_session_and_retry_sooner(clock: FakeClock) -> None:
    hb = Heartbeat(200, 1000, clock=clock, retry_backoff_ms=50)
    hb.reset()
    clock.now += 0.2
    hb.sent()
    hb.failed()
    assert hb.time_to_next() == pytest.approx(0.05)
    clock.now += 0.05
    hb.sent()
    hb.failed()
    assert hb.session_deadline() == pytest.approx(1001.0)
    clock.now = 1001.0
    assert hb.session_expired()


def test_update_adopts_server_settings(clock: FakeClock) -> None:
    hb = Heartbeat(3000, 30000, clock=clock)
    hb.reset()
    hb.update(100, 400)
    assert hb.time_to_next() == pytest.approx(0.1)
    clock.now += 0.4
    assert hb.session_expired()
