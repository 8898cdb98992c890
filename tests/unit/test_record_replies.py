"""Reply parsing of records and dead letters on recorded replies (no server)."""

from __future__ import annotations

from partitions._base.replies import dead_letter_from_entry, fetch_result, record_from_entry


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
