"""The threaded sender keeps one connection across back-to-back rounds on a single server
(``Sender._exchange_held``): taking it from the pool and giving it back each round cost 10-30 us
of CPU a round (python -m bench.exchange_cpu; bench/README.md, issue 18).
A connection that broke, or an exchange that raised, goes back to the pool; a refused
connection still reads as "not sent"."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

import partitions._producer.sender as sender_mod
from partitions._producer.batch import NotSentError
from partitions._producer.sender import Exchange, Sender


class FakeConn:
    def __init__(self) -> None:
        self.connected = True
        self.disconnects = 0

    @property
    def is_connected(self) -> bool:
        return self.connected

    def disconnect(self) -> None:
        self.connected = False
        self.disconnects += 1


class FakePool:
    def __init__(self, refuse: bool = False) -> None:
        self.gets = 0
        self.released: list[FakeConn] = []
        self.refuse = refuse

    def get_connection(self) -> FakeConn:
        if self.refuse:
            raise rex.ConnectionError("refused")
        self.gets += 1
        return FakeConn()

    def release(self, conn: FakeConn) -> None:
        self.released.append(conn)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections the exchanges ran on (each answered with ``expect`` OKs)."""
    used: list[Any] = []

    def exchange_on(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
        used.append(conn)
        return [b"OK"] * expect

    monkeypatch.setattr(sender_mod, "exchange_on", exchange_on)
    return used


def test_back_to_back_rounds_take_the_pool_connection_once(wire: list[Any]) -> None:
    pool, held = FakePool(), dict[Any, Any]()
    for _ in range(3):
        assert Sender._exchange_held(held, Exchange(pool, [b"x"], 2), set()) == [b"OK", b"OK"]
    assert pool.gets == 1 and not pool.released
    assert wire[0] is wire[1] is wire[2] is held[pool]
    Sender._release(held)  # idle: back to the pool before the sender waits
    assert pool.released == [wire[0]] and held == {}


def test_a_broken_connection_goes_back_and_a_new_one_is_taken(wire: list[Any]) -> None:
    pool, held = FakePool(), dict[Any, Any]()
    Sender._exchange_held(held, Exchange(pool, [b"x"], 1), set())
    first = held[pool]
    first.connected = False  # (exchange_on disconnects after a connection error)
    Sender._exchange_held(held, Exchange(pool, [b"x"], 1), set())
    assert pool.released == [first] and pool.gets == 2 and held[pool] is not first


def test_an_exchange_that_raises_releases_its_connection_disconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(sender_mod, "exchange_on", broken)
    pool, held = FakePool(), dict[Any, Any]()
    with pytest.raises(RuntimeError):
        Sender._exchange_held(held, Exchange(pool, [b"x"], 1), set())
    assert held == {} and len(pool.released) == 1 and pool.released[0].disconnects == 1


def test_a_refused_connection_is_not_sent(wire: list[Any]) -> None:
    out = Sender._exchange_held({}, Exchange(FakePool(refuse=True), [b"x"], 2), set())
    assert len(out) == 2 and all(isinstance(r, NotSentError) for r in out)
    assert wire == []
