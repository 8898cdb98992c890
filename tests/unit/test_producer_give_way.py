"""A thread calling send() in a loop holds the GIL; a sender woken for a round, or whose
round's replies arrived, would get it back only at the interpreter's forced switch (5 ms),
with the server idle meanwhile. send() steps aside briefly then (``Producer._give_way``), at
most once per ``GIVE_EVERY_S``, and only when a sender may be waiting (bench/README.md, issue
18, session 11: the producer's client rate)."""

from __future__ import annotations

import os
import resource
import socket
from types import SimpleNamespace
from typing import Any

import pytest

import partitions._producer.producer as producer_mod
from partitions._producer.producer import GIVE_EVERY_S, GIVE_S, Producer
from partitions._producer.sender import Sender


def test_replies_in_tells_whether_a_senders_socket_has_replies_waiting() -> None:
    ours, server = socket.socketpair()
    try:
        sender = Sender.__new__(Sender)
        sender._reading = set()
        assert not sender.replies_in()  # no sender is reading
        sender._reading.add(ours)
        assert not sender.replies_in()  # reading, nothing arrived yet
        server.sendall(b"+OK\r\n")
        assert sender.replies_in()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft <= 1500 and (hard == resource.RLIM_INFINITY or hard > 1500):
            resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
        try:
            # the same socket on descriptor 1,500, which select() would refuse
            high = socket.socket(fileno=os.dup2(ours.fileno(), 1500))
            try:
                assert high.fileno() == 1500
                sender._reading = {high}
                assert sender.replies_in()
            finally:
                high.close()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        sender._reading = {ours}
        ours.close()
        assert not sender.replies_in()  # closed meanwhile: no error, no
    finally:
        ours.close()
        server.close()


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(producer_mod, "time", fake)
    return fake


def producer(replies: bool, buffered: int = 5000) -> Any:
    p = Producer.__new__(Producer)
    p._give_at = 0.0
    p._sender = SimpleNamespace(replies_in=lambda: replies)
    p._acc = SimpleNamespace(buffered=buffered, batch_size=1000)
    return p


def test_send_steps_aside_only_when_a_sender_may_wait_and_at_most_once_per_interval(
    clock: FakeTime,
) -> None:
    idle = producer(replies=False)
    idle._give_way(False)
    assert clock.slept == []  # no sender woken, no replies waiting: no cost
    idle._give_way(True)
    assert clock.slept == [GIVE_S]  # a sender was woken for a round
    idle._give_way(True)
    assert clock.slept == [GIVE_S]  # not again within the interval
    clock.now += GIVE_EVERY_S
    waiting = producer(replies=True)
    waiting._give_way(False)
    assert clock.slept == [GIVE_S, GIVE_S]  # a sender's replies arrived


def test_send_never_steps_aside_under_a_light_load(clock: FakeTime) -> None:
    light = producer(replies=True, buffered=999)  # less than a batch buffered
    light._give_way(True)
    assert clock.slept == []
    producer(replies=True, buffered=1000)._give_way(True)
    assert clock.slept == [GIVE_S]
