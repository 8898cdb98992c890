"""Consumer pieces that need no server: seek targets, ConsumerConfig checks, dead-letter and
XINFO GROUPS parsing."""

from __future__ import annotations

import pytest

from partitions._admin.offsets import target_id, time_id
from partitions._base.errors import ConfigError
from partitions._base.replies import (
    dead_letter_from_entry,
    group_infos_from_reply,
    records_from_read,
)
from partitions._client.config import ClientConfig, ConsumerConfig


def test_seek_targets() -> None:
    assert target_id("earliest") == "0"
    assert target_id("latest") == "$"
    assert target_id("5-3") == "5-3"
    assert target_id("7") == "7-0"
    assert target_id(1000) == target_id("@1000") == "999-18446744073709551615"
    assert time_id(0) == "0"
    for bad in ("soon", "@x", "1-2-3", "-1"):
        with pytest.raises(ConfigError):
            target_id(bad)
    with pytest.raises(ConfigError):
        target_id(True)


def test_consumer_config_checks() -> None:
    ConsumerConfig()
    with pytest.raises(ConfigError):
        ConsumerConfig(fetch_count=0)
    with pytest.raises(ConfigError):
        ConsumerConfig(auto_offset_reset="middle")
    with pytest.raises(ConfigError):
        ConsumerConfig(fetch_count=10_001)
    with pytest.raises(ConfigError, match="socket timeout"):
        ConsumerConfig(block_ms=6000).check_against(ClientConfig(socket_timeout=10))
    ConsumerConfig(block_ms=4000).check_against(ClientConfig(socket_timeout=10))


def test_dead_letter_parsing_keeps_origin_and_payload() -> None:
    entry = [
        b"9-0",
        [b"dlq.topic", b"orders", b"dlq.partition", b"3", b"dlq.id", b"5-1", b"dlq.group",
         b"g", b"dlq.deliveries", b"4", b"dlq.reason", b"max_deliveries", b"key", b"k",
         b"value", b"v", b"h:trace", b"t1"],
    ]  # fmt: skip
    d = dead_letter_from_entry(entry)
    assert (d.dlq_id, d.topic, d.partition, d.original_id) == ("9-0", "orders", 3, "5-1")
    assert (d.group, d.deliveries, d.reason) == ("g", 4, "max_deliveries")
    assert (d.record.key, d.record.value, d.record.headers) == (b"k", b"v", {"trace": b"t1"})
    assert d.to_dict()["id"] == "5-1"


def test_fast_record_parser_matches_the_general_one() -> None:
    entries = [
        [b"1-0", [b"key", b"a", b"value", b"x"]],
        [b"1-1", [b"value", b"y", b"h:z", b"1"]],
        [b"1-2", [b"h:", b""]],
    ]
    recs = records_from_read("t", 0, entries)
    assert [(r.id, r.key, r.value, r.headers) for r in recs] == [
        ("1-0", b"a", b"x", {}),
        ("1-1", None, b"y", {"z": b"1"}),
        ("1-2", None, None, {}),
    ]


def test_group_infos_with_null_lag() -> None:
    reply = [
        [b"name", b"g", b"consumers", 1, b"pending", 2, b"last-delivered-id", b"5-0",
         b"entries-read", None, b"lag", None],
    ]  # fmt: skip
    [info] = group_infos_from_reply(reply)
    assert (info.name, info.pending, info.last_delivered_id, info.lag) == ("g", 2, "5-0", None)
