"""The dead letter's error text: bounded on the way in, parsed on the way out (pure)."""

from __future__ import annotations

import pytest

from partitions._base.errors import ConfigError
from partitions._base.replies import dead_letter_from_entry
from partitions._consumer.calls import MAX_ERROR_BYTES, TRUNCATED, bounded_error, check_reason

META = [b"dlq.topic", b"t", b"dlq.partition", b"0", b"dlq.id", b"5-0", b"dlq.group", b"g",
        b"dlq.deliveries", b"1", b"dlq.reason", b"deserialization"]  # fmt: skip


def test_a_short_error_is_kept_as_utf8() -> None:
    assert bounded_error("ValueError: prix €") == "ValueError: prix €".encode()


def test_a_long_error_is_cut_on_a_character_with_a_marker() -> None:
    out = bounded_error("€" * 1000)  # 3 bytes each
    assert len(out) <= MAX_ERROR_BYTES and out.endswith(TRUNCATED)
    assert set(out[: -len(TRUNCATED)].decode()) == {"€"}


def test_lone_surrogates_do_not_break_encoding() -> None:
    assert bounded_error("bad \udcff byte") == b"bad \\udcff byte"


@pytest.mark.parametrize("reason", ["", "has space", "x" * 65, "new\nline"])
def test_a_reason_must_be_a_short_label(reason: str) -> None:
    with pytest.raises(ConfigError):
        check_reason(reason)


def test_error_is_read_between_the_metadata_and_the_original_fields() -> None:
    d = dead_letter_from_entry([b"9-0", [*META, b"dlq.error", b"KeyError: 'a'", b"dlq.omitted",
                                         b"3", b"value", b"v"]])  # fmt: skip
    assert (d.error, d.omitted, d.record.value, d.problems) == ("KeyError: 'a'", 3, b"v", ())
    assert d.to_dict()["error"] == "KeyError: 'a'"


def test_an_entry_without_an_error_has_none() -> None:
    d = dead_letter_from_entry([b"9-0", [*META, b"value", b"v"]])
    assert (d.error, d.record.value) == (None, b"v")
    assert d.to_dict()["error"] is None
