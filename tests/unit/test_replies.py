"""Every reply parser of partitions._base.replies on replies recorded from Valkey and Redis 7.

The fixtures (tests/unit/replies/*.txt) were written by tests/unit/replies/record.py, which ran
one consumer through a fixed scenario: five entries appended raw (two keyed, one with a header,
one keyless, one keyed tombstone, one foreign), all read, the first nacked twice into the
dead-letter stream (max_deliveries=2), a commit, a seek to the start. The expectations below
come from that scenario, not from the parsers.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from partitions._base.errors import UnknownGroupError
from partitions._base.replies import (
    ack_result,
    dead_letter_from_entry,
    deleted_ids,
    entry_ids,
    fence_from_reply,
    fetch_result,
    group_infos_from_reply,
    hand_result,
    library_names,
    parse_describe,
    parse_member_reply,
    pending_summary_from_reply,
    raise_for_status,
    read_reply_items,
    records_from_entries,
    retry_result,
    seek_result,
    settings_from_reply,
    stream_info_from_reply,
    text,
    time_ms_from_reply,
)
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition

HERE = Path(__file__).resolve().parent / "replies"
SERVERS = sorted(p.stem for p in HERE.glob("*.txt"))
SETTINGS = GroupSettings(
    session_timeout_ms=1000, heartbeat_interval_ms=200, max_deliveries=2, reclaim_idle_ms=60_000
)
KEYS = [b"k1", b"k2", None, b"k3", None]
VALUES = [b"v1", b"v2", b"keyless", None, None]


@pytest.fixture(params=SERVERS)
def rec(request: pytest.FixtureRequest) -> dict[str, list[Any]]:
    body = (HERE / f"{request.param}.txt").read_text().split("\n", 1)[1]
    replies: dict[str, list[Any]] = ast.literal_eval(body)
    return replies


def ids(rec: dict[str, list[Any]]) -> list[str]:
    return entry_ids(rec["xrange"][0])


def test_both_servers_were_recorded() -> None:
    assert SERVERS == ["redis7", "valkey"]


def test_entries_become_records_with_partstream_fields(rec: dict[str, list[Any]]) -> None:
    records = records_from_entries("t", 0, rec["xrange"][0])
    assert [r.key for r in records] == KEYS
    assert [r.value for r in records] == VALUES
    assert records[1].headers == {"trace": b"abc"}
    assert [r.foreign for r in records] == [False, False, False, False, True]
    assert records[4].fields == {b"payload": b"x", b"user": b"u"}
    assert [r.id for r in records] == ids(rec)
    assert all(r.timestamp == int(r.id.split("-")[0]) for r in records)


def test_a_fenced_read_hands_out_every_entry_once(rec: dict[str, list[Any]]) -> None:
    res = fetch_result("t", 0, rec["consume_read"][0])
    assert res.status == 1 and res.detail == ""
    assert [r.id for r in res.records] == ids(rec)
    assert [r.key for r in res.records] == KEYS and [r.value for r in res.records] == VALUES
    assert all(r.deliveries == 1 and not r._claim for r in res.records)
    assert (res.cursor, res.tail, res.dead, res.reclaimed) == ("", "", 0, 0)


def test_retry_keeps_the_nacked_entry_then_dead_letters_it(rec: dict[str, list[Any]]) -> None:
    first, second = (retry_result(r) for r in rec["consume_retry"])
    assert (first.status, first.ids, first.dead) == (1, {ids(rec)[0]}, 0)
    assert (second.status, second.ids, second.dead) == (1, set(), 1)


def test_hand_reports_what_it_acked(rec: dict[str, list[Any]]) -> None:
    res = hand_result(rec["consume_hand"][0])
    # The four entries of the first read that were not nacked, acked with the hand-out.
    assert (res.status, res.acked, res.ids) == (1, 4, set())


def test_seek_answers_the_new_position(rec: dict[str, list[Any]]) -> None:
    status, detail = seek_result(rec["consume_seek"][0])
    assert status == 1 and detail == ids(rec)[-1]


def test_ack_and_refusals_follow_the_scripts_header() -> None:
    # consume.lua's ack answer and its refusals (not recorded: the consumer acks on its reads).
    assert (ack_result([1, 3]).status, ack_result([1, 3]).acked) == (1, 3)
    refused = ack_result([0, b"member-2"])
    assert (refused.status, refused.detail, refused.acked) == (0, "member-2", 0)
    lost = fetch_result("t", 0, [-1, b"fence"])
    assert (lost.status, lost.detail, lost.records) == (-1, "fence", [])
    assert retry_result([0, b"m"]).detail == "m" and hand_result([-1, b"group"]).status == -1


def test_member_replies_carry_the_group_settings_and_grants(rec: dict[str, list[Any]]) -> None:
    desc = parse_describe(rec["describe"][0], "g")
    first = parse_member_reply(rec["member"][0], "g")
    last = parse_member_reply(rec["member"][-1], "g")
    assert first.member_id == last.member_id == desc.members[0].member_id
    assert first.settings == last.settings == SETTINGS
    assert first.created_group
    assert set(last.owned) == {TopicPartition("t", 0)} and not last.reconciling
    grant = last.owned[TopicPartition("t", 0)]
    assert (grant.token, grant.epoch) == (desc.partitions[0].token, desc.partitions[0].epoch)


def test_describe_is_one_snapshot_of_the_group(rec: dict[str, list[Any]]) -> None:
    desc = parse_describe(rec["describe"][0], "g")
    assert (desc.group, desc.state, desc.settings, desc.topics) == (
        "g",
        "stable",
        SETTINGS,
        {"t": 1},
    )
    (member,) = desc.members
    assert member.owned == member.target == (TopicPartition("t", 0),)
    assert member.topics == ("t",) and member.client.startswith("partstream consumer pid")
    assert not member.left and member.instance_id is None
    assert desc.owners() == {TopicPartition("t", 0): member.member_id}
    assert desc.epoch == desc.target_epoch == member.member_epoch
    assert desc.server_time_ms > 0 and member.seconds_since_heartbeat < 5


def test_an_error_status_becomes_its_typed_error(rec: dict[str, list[Any]]) -> None:
    with pytest.raises(UnknownGroupError, match="no-such-group"):
        raise_for_status(rec["describe_unknown"][0], "no-such-group")
    with pytest.raises(UnknownGroupError):
        parse_describe(rec["describe_unknown"][0], "no-such-group")


def test_fence_names_the_owner_and_its_grant(rec: dict[str, list[Any]]) -> None:
    desc = parse_describe(rec["describe"][0], "g")
    owner = desc.partitions[0]
    assert fence_from_reply(rec["fence"][0]) == (owner.owner, owner.token)
    assert fence_from_reply(None) is None


def test_stored_settings_read_back(rec: dict[str, list[Any]]) -> None:
    assert settings_from_reply(rec["group_cfg"][0]) == SETTINGS


def test_dead_letter_carries_the_original_record(rec: dict[str, list[Any]]) -> None:
    (entry,) = rec["dlq_xrange"][0]
    d = dead_letter_from_entry(entry)
    assert (d.topic, d.partition, d.original_id, d.group) == ("t", 0, ids(rec)[0], "g")
    assert (d.deliveries, d.reason, d.problems, d.omitted) == (2, "max_deliveries", (), 0)
    assert (d.record.key, d.record.value, d.record.id) == (b"k1", b"v1", ids(rec)[0])
    assert d.dlq_id == text(entry[0])


def test_stream_info_raw_and_parsed_agree(rec: dict[str, list[Any]]) -> None:
    raw = stream_info_from_reply(rec["xinfo_stream_raw"][0])
    assert raw == stream_info_from_reply(rec["xinfo_stream"][0])
    assert (raw.length, raw.groups, raw.entries_added) == (5, 1, 5)
    assert (raw.first_id, raw.last_id, raw.last_generated_id) == (ids(rec)[0], ids(rec)[-1],
                                                                  ids(rec)[-1])  # fmt: skip
    assert raw.first_timestamp == int(ids(rec)[0].split("-")[0])


def test_group_info_raw_and_parsed_agree(rec: dict[str, list[Any]]) -> None:
    (raw,) = group_infos_from_reply(rec["xinfo_groups_raw"][0])
    assert [raw] == group_infos_from_reply(rec["xinfo_groups"][0])
    # After the seek to the start: nothing delivered, nothing pending, all five behind.
    assert (raw.name, raw.last_delivered_id, raw.pending, raw.lag) == ("g", "0-0", 0, 5)


def test_pending_summary_raw_and_parsed_agree(rec: dict[str, list[Any]]) -> None:
    raw = pending_summary_from_reply(rec["xpending_raw"][0])
    assert raw == pending_summary_from_reply(rec["xpending"][0])
    assert (raw.count, raw.min_id, raw.max_id) == (5, ids(rec)[0], ids(rec)[-1])


def test_a_pending_entry_whose_payload_is_gone(rec: dict[str, list[Any]]) -> None:
    ((stream, entries),) = read_reply_items(rec["xreadgroup_pending"][0])
    assert ":t:{t:0" in stream  # partition 0 of topic t (recorded with or without a tag)
    assert deleted_ids(entries) == [ids(rec)[0]]
    (kept,) = records_from_entries("t", 0, entries)
    assert (kept.id, kept.key, kept.headers) == (ids(rec)[1], b"k2", {"trace": b"abc"})
    assert read_reply_items(None) == [] and read_reply_items([]) == []


def test_server_time_and_loaded_libraries(rec: dict[str, list[Any]]) -> None:
    assert time_ms_from_reply(rec["time"][0]) > int(ids(rec)[-1].split("-")[0])
    names = library_names(rec["function_list"][0])
    assert names and all(n.startswith("partstream_") for n in names)
