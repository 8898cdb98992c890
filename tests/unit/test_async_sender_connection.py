"""The asyncio producer's sender keeps its connection across back-to-back rounds on a single
server, as the threaded one does (``AsyncProducer._exchange_held``; tests/unit/
test_sender_connection.py): a connection that broke, or an exchange that raised or was
cancelled, goes back to the pool; a refused connection reads as "not sent"; the kept ones go
back when the sender task waits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import redis.exceptions as rex

import partitions._producer.aio as aio
from partitions._base.keys import Keys
from partitions._client.config import ClientConfig
from partitions._producer.batch import NotSentError
from partitions._producer.sender import Exchange


class FakeConn:
    def __init__(self) -> None:
        self.connected = True

    @property
    def is_connected(self) -> bool:
        return self.connected


class FakeLink:
    def __init__(self, refuse: bool = False) -> None:
        self.gets = 0
        self.released: list[FakeConn] = []
        self.refuse = refuse

    async def acquire(self) -> FakeConn:
        if self.refuse:
            raise rex.ConnectionError("refused")
        self.gets += 1
        return FakeConn()

    async def release(self, conn: FakeConn) -> None:
        self.released.append(conn)


@pytest.fixture
def producer() -> aio.AsyncProducer:
    conn: Any = SimpleNamespace(
        config=ClientConfig(), server=SimpleNamespace(replicas=0, has=lambda f: True),
        is_cluster=False, keys=Keys("paths"), client=SimpleNamespace(connection_pool=None),
    )  # fmt: skip
    p = aio.AsyncProducer(conn)
    p._single = FakeLink()  # type: ignore[assignment]
    return p


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections the exchanges ran on (each answered with ``expect`` OKs)."""
    used: list[Any] = []

    async def exchange_on(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
        used.append(conn)
        return [b"OK"] * expect

    monkeypatch.setattr(aio, "aexchange_on", exchange_on)
    return used


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_back_to_back_rounds_take_the_pool_connection_once(
    producer: aio.AsyncProducer, wire: list[Any]
) -> None:
    link: Any = producer._single
    for _ in range(3):
        assert run(producer._exchange_held(Exchange(link, [b"x"], 2))) == [b"OK", b"OK"]
    assert link.gets == 1 and not link.released
    assert wire[0] is wire[1] is wire[2] and producer._held == [wire[0]]
    run(producer._release_held())  # idle: back to the pool before the sender task waits
    assert link.released == [wire[0]] and producer._held == []


def test_a_broken_connection_goes_back_and_a_new_one_is_taken(
    producer: aio.AsyncProducer, wire: list[Any]
) -> None:
    link: Any = producer._single
    run(producer._exchange_held(Exchange(link, [b"x"], 1)))
    first = producer._held[0]
    first.connected = False  # (aexchange_on disconnects after a connection error)
    run(producer._exchange_held(Exchange(link, [b"x"], 1)))
    assert link.released == [first] and link.gets == 2 and producer._held[0] is not first


@pytest.mark.parametrize("error", [RuntimeError("bug"), asyncio.CancelledError()])
def test_an_exchange_that_raises_or_is_cancelled_gives_its_connection_back(
    producer: aio.AsyncProducer, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    async def broken(conn: Any, payload: list[bytes], expect: int) -> list[Any]:
        raise error

    monkeypatch.setattr(aio, "aexchange_on", broken)
    link: Any = producer._single
    with pytest.raises(type(error)):
        run(producer._exchange_held(Exchange(link, [b"x"], 1)))
    assert producer._held == [] and len(link.released) == 1


def test_a_refused_connection_is_not_sent(producer: aio.AsyncProducer, wire: list[Any]) -> None:
    link = FakeLink(refuse=True)
    producer._single = link  # type: ignore[assignment]
    out = run(producer._exchange_held(Exchange(link, [b"x"], 2)))
    assert len(out) == 2 and all(isinstance(r, NotSentError) for r in out)
    assert wire == [] and producer._held == []
