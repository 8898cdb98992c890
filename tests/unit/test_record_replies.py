"""Reply parsing of records, dead letters and XINFO GROUPS on recorded replies (no server)."""

from __future__ import annotations

from partitions._base.replies import (
    dead_letter_from_entry,
    fetch_result,
    group_infos_from_reply,
    record_from_entry,
    records_from_read,
)


def test_partstream_entries_are_not_foreign_and_other_fields_are() -> None:
    own = record_from_entry("t", 0, [b"1-0", [b"key", b"k", b"value", b"v", b"h:trace", b"a"]])
    assert not own.foreign and own.headers == {"trace": b"a"}
    tomb = record_from_entry("t", 0, [b"1-1", [b"h:", b""]])
    assert not tomb.foreign and tomb.value is None
    other = record_from_entry("t", 0, [b"1-2", [b"payload", b"x", b"user", b"u"]])
    assert other.foreign and other.fields == {b"payload": b"x", b"user": b"u"}
    assert (other.key, other.value, other.headers) == (None, None, {})
    twice = record_from_entry("t", 0, [b"1-3", [b"key", b"a", b"key", b"b"]])
    assert twice.foreign and twice.key == b"a"


def test_recovered_entries_of_a_read_carry_their_recorded_deliveries() -> None:
    entries = [[b"1-0", [b"key", b"k", b"value", b"a"]], [b"2-0", [b"key", b"k", b"value", b"b"]]]
    res = fetch_result("t", 0, [1, 0, entries, b"1-0", b"", 0, 0, [3]])
    first, second = res.records
    assert (first.deliveries, first._claim) == (4, True)
    assert (second.deliveries, second._claim) == (1, False)
    again = second.again()
    assert (again.deliveries, again._claim, again.value) == (2, True, b"b")


def test_dead_letter_metadata_is_read_by_position() -> None:
    meta = [b"dlq.topic", b"t", b"dlq.partition", b"2", b"dlq.id", b"5-1", b"dlq.group", b"g",
            b"dlq.deliveries", b"3", b"dlq.reason", b"max_deliveries"]  # fmt: skip
    body = [b"key", b"k", b"dlq.reason", b"forged", b"dlq.partition", b"x"]
    d = dead_letter_from_entry([b"9-0", meta + body])
    assert (d.topic, d.partition, d.original_id, d.group) == ("t", 2, "5-1", "g")
    assert (d.deliveries, d.reason, d.problems) == (3, "max_deliveries", ())
    assert d.record.key == b"k" and d.record.fields[b"dlq.reason"] == b"forged"


def test_a_malformed_dead_letter_is_parsed_with_its_problems() -> None:
    d = dead_letter_from_entry([b"9-0", [b"dlq.topic", b"t", b"dlq.partition", b"zero"]])
    assert d.topic == "t" and d.partition is None
    assert "dlq.partition 'zero' is not an integer" in d.problems
    assert "no dlq.reason" in d.problems
    assert dead_letter_from_entry([b"9-1", None]).problems


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
