"""A topic that grows under live consumers: the new partitions join the group's assignment."""

from __future__ import annotations

import time

import pytest

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.settings import GroupSettings
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer import ops as consumer_mod
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer


def test_added_partitions_are_assigned_and_consumed(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_mod, "METADATA_MAX_AGE_S", 0.2)
    TopicAdmin(conn).create(TopicSpec("grow", 2))
    settings = GroupSettings(session_timeout_ms=1000, heartbeat_interval_ms=200)
    with Consumer(
        "g", "grow", conn=conn, config=ConsumerConfig(block_ms=100), group_settings=settings
    ) as c:
        c.poll(timeout=0.5)
        assert {tp.partition for tp in c.assignment()} == {0, 1}
        TopicAdmin(conn).alter("grow", partitions=4)
        with Producer(conn) as p:
            for part in (2, 3):
                p.send("grow", f"to-{part}", key="k", partition=part)
        seen: set[int] = set()
        end = time.monotonic() + 15
        while seen != {2, 3} and time.monotonic() < end:
            seen |= {r.partition for r in c.poll(timeout=0.2)}
        assert seen == {2, 3}
        assert {tp.partition for tp in c.assignment()} == {0, 1, 2, 3}
