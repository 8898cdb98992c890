"""Partition keys follow the topic's metadata: a new topic's chosen tags are what every
client uses, and a topic stored before tags existed (no ``tags`` field) keeps its original
keys through produce, consume, replay, lag, dead letters, growth and delete. Runs on every
server, the local cluster included."""

from __future__ import annotations

import pytest

from partitions._admin.deadletter import DeadLetters
from partitions._admin.groups import group_offsets, reclaim_now
from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.keys import TopicLayout
from partitions._client.connection import Connection
from partitions._consumer import ops as consumer_ops
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions._telemetry.scrape import Scraper
from tests.helpers import FAST, drain, layout, wait_for

pytestmark = pytest.mark.integration


def create_old_style(conn: Connection, spec: TopicSpec) -> None:
    """What a client from before partition tags wrote: the metadata without ``tags``."""
    conn.functions.call("topic_create", [conn.keys.topic_meta(spec.name)], spec.to_fields())
    conn.client.sadd(conn.keys.topics, spec.name)


def send_one_per_partition(conn: Connection, topic: str, n: int) -> None:
    with Producer(conn) as p:
        futures = [p.send(topic, f"v{part}", key=f"k{part}", partition=part) for part in range(n)]
        p.flush(10)
    for f in futures:
        f.result(10)


def test_a_new_topic_records_its_tags_and_its_records_are_under_them(conn: Connection) -> None:
    meta = TopicAdmin(conn).create(TopicSpec("fresh", 4))
    assert meta.layout == TopicLayout.spread("fresh", 4) and all(meta.tags)
    raw = conn.client.hget(conn.keys.topic_meta("fresh"), "tags")
    assert raw.decode().split(",") == list(meta.tags)
    send_one_per_partition(conn, "fresh", 4)
    for p in range(4):
        key = conn.keys.stream(meta.layout, p)
        assert key == f"{conn.keys.ns}:t:{{fresh:{p}:{meta.tags[p]}}}"
        assert conn.client.xlen(key) == 1
        assert not conn.client.exists(f"{conn.keys.ns}:t:{{fresh:{p}}}")  # not the old key
    desc = TopicAdmin(conn).describe("fresh")
    assert [i.slot for i in desc.partitions] == [meta.layout.slot(p) for p in range(4)]
    assert desc.to_dict()["tags"] == list(meta.tags)


def test_a_topic_stored_without_tags_keeps_its_keys_everywhere(conn: Connection) -> None:
    create_old_style(conn, TopicSpec("old", 3))
    meta = TopicAdmin(conn).get("old")
    assert meta.tags == () and not meta.layout.spread_out
    old_key = f"{conn.keys.ns}:t:{{old:%d}}"
    send_one_per_partition(conn, "old", 3)
    assert [conn.client.xlen(old_key % p) for p in range(3)] == [1, 1, 1]
    assert len(list(replay(conn, "old"))) == 3

    with Consumer("g", "old", conn=conn, group_settings=FAST) as c:
        got = drain(c, 3)
        assert sorted(r.value for r in got) == [b"v0", b"v1", b"v2"]
        c.commit()
        assert conn.client.xinfo_groups(old_key % 0)[0]["name"] == b"g"  # read at the old key
    offsets = group_offsets(conn, "g")
    assert [(o.partition, o.lag) for o in offsets] == [(0, 0), (1, 0), (2, 0)]
    assert reclaim_now(conn, "g").stuck == 0

    # Growth: the old partitions keep their keys, the new ones get tags.
    grown = TopicAdmin(conn).alter("old", partitions=5)
    assert grown.tags[:3] == ("", "", "") and all(grown.tags[3:])
    send_one_per_partition(conn, "old", 5)
    assert [conn.client.xlen(old_key % p) for p in range(3)] == [2, 2, 2]
    for p in (3, 4):
        assert conn.client.xlen(conn.keys.stream(grown.layout, p)) == 1
        assert not conn.client.exists(old_key % p)

    scrape = Scraper(conn).scrape()
    lengths = {s.partition: s.length for s in scrape.partitions if s.topic == "old"}
    assert lengths == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}

    assert DeadLetters(conn).list("old") == []
    assert TopicAdmin(conn).delete("old")
    assert not any(conn.client.exists(old_key % p) for p in range(3))
    assert not conn.client.exists(conn.keys.stream(grown.layout, 3))


def test_a_consumer_reads_partitions_another_member_learned_of_first(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partitions added while a consumer's metadata is fresh are granted to it (a member
    that joined later knew the new count first): it reads the metadata before it claims
    them, so it claims and reads the partitions' real keys."""
    monkeypatch.setattr(consumer_ops, "METADATA_MAX_AGE_S", 3600.0)  # c never re-reads
    TopicAdmin(conn).create(TopicSpec("later", 2))
    with Consumer("g2", "later", conn=conn, group_settings=FAST) as c:
        c.poll(timeout=0.5)
        meta = TopicAdmin(conn).alter("later", partitions=4)
        with Consumer("g2", "later", conn=conn, group_settings=FAST) as other:
            wait_for(lambda: other.poll(timeout=0.1) or other.assignment(), 10, "a grant")
        # other left: c is granted all four, two of which its metadata does not have.
        wait_for(lambda: c.poll(timeout=0.1) or len(c.assignment()) == 4, 15, "c owns 4")
        send_one_per_partition(conn, "later", 4)
        seen: set[int] = set()

        def all_read() -> bool:
            seen.update(r.partition for r in c.poll(timeout=0.1))
            return seen == {0, 1, 2, 3}

        wait_for(all_read, 15, "all four partitions read by c")
        fences = [conn.client.hget(conn.keys.fence(meta.layout, p), "g2") for p in range(4)]
        assert all(f is not None and f.split()[0].decode() == c.member_id for f in fences)
        assert not conn.client.exists(f"{conn.keys.ns}:t:{{later:3}}:fence")  # not the old key


def test_layout_helper_names_a_topic_before_it_exists(conn: Connection) -> None:
    before = layout(conn, "soon", 6)
    assert TopicAdmin(conn).create(TopicSpec("soon", 6)).layout == before == layout(conn, "soon")
