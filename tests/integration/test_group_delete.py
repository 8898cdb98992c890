"""Deleting a group removes its positions too: a group re-created under the name starts afresh."""

from __future__ import annotations

import time

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.replies import group_infos_from_reply
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from tests.helpers import FAST, layout


def _drain(conn: Connection, group: str, want: int) -> int:
    got = 0
    with Consumer(group, "t", conn=conn, config=ConsumerConfig(block_ms=100),
                  group_settings=FAST) as c:  # fmt: skip
        end = time.monotonic() + 20
        while got < want and time.monotonic() < end:
            got += len(c.poll(timeout=0.2))
        c.poll(timeout=0.05)  # commit the last batch
    return got


def test_delete_group_drops_positions_marks_and_fences(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("t", 3))
    with Producer(conn) as p:
        for i in range(60):
            p.send("t", str(i), key=f"k{i}")
    assert _drain(conn, "g", 60) == 60
    k = conn.keys
    assert any(conn.client.hexists(k.stream_groups(layout(conn, "t"), p), "g") for p in range(3))

    assert GroupAdmin(conn).delete("g", force=True) is True
    for p in range(3):
        infos = group_infos_from_reply(conn.client.xinfo_groups(k.stream(layout(conn, "t"), p)))
        assert [i.name for i in infos] == []  # the stream group is gone
        assert not conn.client.hexists(k.stream_groups(layout(conn, "t"), p), "g")
        assert not conn.client.hexists(k.fence(layout(conn, "t"), p), "g")
    # a group re-created under the same name reads everything again, not from old positions
    assert _drain(conn, "g", 60) == 60
