"""Helpers for tests of code built on partstream: the ones partstream's own suite uses.

They need a :class:`~partitions.Connection` to a real server; the pytest plugin
(:mod:`partitions.pytest_plugin`, loaded automatically once partstream is installed) provides
one per test, in a namespace of its own that is dropped afterwards. Nothing here imports
pytest, so these also serve scripts and other test runners::

    from partitions import Consumer
    from partitions.testing import FAST_GROUP, create_topic, drain, produce

    def test_orders_are_read(partstream_conn):
        create_topic(partstream_conn, "orders", partitions=2)
        produce(partstream_conn, "orders", 10)
        with Consumer("billing", "orders", conn=partstream_conn, group_settings=FAST_GROUP) as c:
            assert len(drain(c, 10)) == 10
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from partitions import (
    AsyncConsumer,
    Connection,
    Consumer,
    GroupSettings,
    Producer,
    Record,
    TopicAdmin,
    TopicSpec,
)
from partitions._base.failover import repeatable_steps
from partitions._base.keys import TopicLayout

__all__ = [
    "FAST_GROUP",
    "create_topic",
    "drain",
    "drain_async",
    "drop_namespace",
    "new_namespace",
    "produce",
    "produce_records",
    "topic_layout",
    "wait_for",
]

T = TypeVar("T")

# A member that stops heartbeating loses its partitions within a second, so tests of
# rebalancing and takeover finish quickly. Too short for a production group under load.
FAST_GROUP = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200)

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def wait_for(
    cond: Callable[[], T], timeout: float = 10.0, what: str = "the condition", *, step: float = 0.02
) -> T:
    """Call ``cond`` every ``step`` seconds until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds, so a test that waits
    for something that never happens fails with a readable message instead of hanging.
    """
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def new_namespace(prefix: str = "t") -> str:
    """A namespace no other test (or process) uses: ``prefix`` and 12 random hex digits."""
    return prefix + uuid.uuid4().hex[:12]


def drop_namespace(conn: Connection, namespace: str | None = None) -> int:
    """Delete every key of ``namespace`` (default: the connection's); returns how many.

    SCANs each primary (every node of a cluster) and deletes what it finds, never FLUSHALL:
    other tests and users may share the server. On a cluster or behind Sentinels it waits out
    a failover (a primary lost, its replica being promoted) for up to 30 s, sweeping again
    on the new primaries: SCAN and UNLINK are safe to repeat.
    """
    pattern = _GLOB_SPECIAL.sub(r"\\\1", namespace or conn.keys.ns) + ":*"
    client = conn.client
    deleted = 0

    def sweep() -> int:
        nonlocal deleted
        nodes = (
            [client.get_redis_connection(n) for n in client.get_primaries()]
            if conn.is_cluster
            else [client]
        )
        for node in nodes:
            batch = list(node.scan_iter(match=pattern, count=1000))
            for i in range(0, len(batch), 500):
                # On a cluster the client splits the keys by slot and sends each to the node
                # that serves it now (a multi-slot UNLINK would be refused).
                deleted += int(client.unlink(*batch[i : i + 500]))
        return deleted

    return int(conn.functions.run(repeatable_steps(client, sweep)))


def create_topic(conn: Connection, name: str = "orders", partitions: int = 4, **spec: Any) -> str:
    """Create topic ``name`` (``spec``: further :class:`~partitions.TopicSpec` fields); returns
    the name. An existing topic is an error, as in production: each test has its namespace."""
    TopicAdmin(conn).create(TopicSpec(name, partitions, **spec))
    return name


def topic_layout(conn: Connection, name: str, partitions: int | None = None) -> TopicLayout:
    """How topic ``name``'s partition keys are named, for ``conn.keys.stream(layout, p)`` and
    the other partition keys: from its metadata; for a topic not created yet, with
    ``partitions``, the layout its creation will choose (it is deterministic)."""
    if partitions is not None and not TopicAdmin(conn).exists(name):
        return TopicLayout.spread(name, partitions)
    return TopicAdmin(conn).get(name).layout


def numbered(count: int, keys: int = 10, start: int = 0) -> Iterator[tuple[str, str]]:
    """``(key, value)`` pairs ``("k{i % keys}", "v{i}")`` for i in ``start .. start+count-1``.

    The values are unique and each key's values come in increasing i, so a test can check
    per-key order and count duplicates from the values alone.
    """
    for i in range(start, start + count):
        yield f"k{i % keys}", f"v{i}"


def produce(conn: Connection, topic: str, count: int, keys: int = 10, start: int = 0) -> None:
    """Send ``count`` numbered records (see :func:`numbered`) and wait until each is stored."""
    produce_records(conn, topic, numbered(count, keys, start))


def produce_records(
    conn: Connection, topic: str, records: Iterable[tuple[Any, Any]], timeout: float = 30.0
) -> None:
    """Send ``(key, value)`` pairs in order and wait until each is stored.

    Raises the first send's error (a future's exception) instead of leaving it unseen.
    """
    with Producer(conn) as producer:
        futures = [producer.send(topic, value, key=key) for key, value in records]
        producer.flush(timeout)
    for future in futures:
        future.result(timeout)


def drain(
    consumer: Consumer, want: int, timeout: float = 10.0, poll_timeout: float = 0.2
) -> list[Record]:
    """Poll until ``want`` records arrived or ``timeout`` passed; returns what arrived.

    It does not fail on a shortfall: the test compares what it got with what it expected,
    which says more than a timeout would.
    """
    out: list[Record] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        out += consumer.poll(timeout=poll_timeout)
    return out


async def drain_async(
    consumer: AsyncConsumer, want: int, timeout: float = 10.0, poll_timeout: float = 0.2
) -> list[Record]:
    """:func:`drain` for an :class:`~partitions.AsyncConsumer`."""
    out: list[Record] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        out += await consumer.poll(timeout=poll_timeout)
    return out
