"""The pure pieces behind lag seconds, the exporter and the dashboard's charts (no server)."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from partitions._admin.deadletter import OTHER, UNCLASSIFIED, DeadLetterTally
from partitions._admin.groups import GroupLag, LagCheck
from partitions._admin.lag import (
    RECOUNT_BELOW,
    PartitionOffset,
    age_ms,
    needs_count,
    needs_head,
    offset_of,
    older,
)
from partitions._admin.topics import TopicMeta, TopicSpec
from partitions._base.errors import ConfigError
from partitions._base.replies import GroupStreamInfo, PendingSummary, pending_summary_from_reply
from partitions._telemetry.exporter import metric_families, require_prometheus
from partitions._telemetry.scrape import DeadLetterCount, GroupState, PartitionState, Scrape
from partitions.dashboard.snapshot import History, percentile

NOTHING = PendingSummary(0, None, None)


def info(ldi: str, pending: int = 0, lag: int | None = 0, read: int | None = 10) -> GroupStreamInfo:
    return GroupStreamInfo("g", ldi, pending, read, lag)


def test_older_and_age() -> None:
    assert older("5-1", "5-0") == "5-0" and older("10-0", "9-9") == "9-9"
    assert older(None, "3-0") == "3-0" and older("3-0", None) == "3-0" and older(None, None) is None
    assert age_ms(1500, "1000-3") == 500 and age_ms(900, "1000-0") == 0 and age_ms(5, None) == 0


def test_caught_up_group_has_no_lag_seconds() -> None:
    off = offset_of("t", 0, info("100-0"), NOTHING, length=5, now_ms=9_000)
    assert (off.lag, off.pending, off.oldest_unacked_id, off.lag_ms) == (0, 0, None, 0)
    assert off.entries_read == 10 and off.to_dict()["lag_seconds"] == 0
    assert not needs_head(info("100-0"), NOTHING)


def test_oldest_pending_entry_before_the_position_needs_no_extra_read() -> None:
    pend = PendingSummary(3, "40-0", "90-0")
    assert not needs_head(info("100-0", 3, lag=None), pend)
    i = info("100-0", 3, lag=None, read=None)
    off = offset_of("t", 1, i, pend, length=50, now_ms=1_040, counted=(7, True))
    assert (off.lag, off.pending, off.oldest_unacked_id, off.lag_ms) == (10, 3, "40-0", 1_000)
    assert off.lag_seconds == 1.0


def test_a_positive_server_lag_is_checked_against_the_head_and_bounded() -> None:
    pend = PendingSummary(3, "40-0", "90-0")
    i = info("100-0", 3, lag=7)
    assert needs_head(i, pend)  # even with an older pending entry: it tells the counter stale
    stale = offset_of("t", 1, i, pend, length=50, now_ms=1_040, head_id=None)
    assert (stale.lag, stale.oldest_unacked_id, stale.entries_read) == (3, "40-0", None)
    off = offset_of("t", 1, i, pend, length=50, now_ms=1_040, head_id="120-0")
    assert (off.lag, off.oldest_unacked_id, off.entries_read) == (10, "40-0", 10)
    big = offset_of("t", 1, info("100-0", lag=5_000), NOTHING, length=900, now_ms=1, head_id="1-0")
    assert (big.lag, big.exact, big.entries_read) == (900, True, None)  # within the length


def test_a_small_positive_server_lag_is_counted_and_the_count_stands() -> None:
    assert needs_count(info("100-0", lag=None)) and needs_count(info("100-0", lag=1))
    assert needs_count(info("100-0", lag=RECOUNT_BELOW))
    assert not needs_count(info("100-0", lag=0))
    assert not needs_count(info("100-0", lag=RECOUNT_BELOW + 1))
    i = info("100-0", lag=4)
    off = offset_of("t", 0, i, NOTHING, length=9, now_ms=2_000, head_id=None, counted=(0, True))
    assert (off.lag, off.oldest_unacked_id, off.lag_ms) == (0, None, 0)
    off = offset_of("t", 0, i, NOTHING, length=9, now_ms=2_000, head_id="150-0", counted=(2, True))
    assert (off.lag, off.oldest_unacked_id, off.entries_read) == (2, "150-0", None)


def test_nothing_pending_the_first_undelivered_entry_is_the_oldest() -> None:
    assert needs_head(info("100-0", lag=4), NOTHING)
    off = offset_of("t", 0, info("100-0", lag=4), NOTHING, length=9, now_ms=2_000, head_id="150-0")
    assert (off.lag, off.oldest_unacked_id, off.lag_ms) == (4, "150-0", 1_850)


def test_pending_after_the_position_after_a_backward_setid_is_compared_with_the_head() -> None:
    pend = PendingSummary(2, "300-0", "310-0")
    assert needs_head(info("100-0", 2, lag=9), pend)
    off = offset_of("t", 0, info("100-0", 2, lag=9), pend, length=20, now_ms=500, head_id="120-0")
    assert off.oldest_unacked_id == "120-0" and off.lag == 11


def test_null_server_lag_uses_the_count_and_hides_entries_read() -> None:
    i = info("100-0", 1, lag=None, read=None)
    pend = PendingSummary(1, "90-0", "90-0")
    with pytest.raises(ValueError):
        offset_of("t", 0, i, pend, length=10, now_ms=100)
    off = offset_of("t", 0, i, pend, length=10, now_ms=190, counted=(5, False))
    assert (off.lag, off.exact, off.entries_read, off.lag_ms) == (6, False, None, 100)


def test_a_group_that_never_read_lags_by_the_stream_from_its_first_entry() -> None:
    off = offset_of("t", 2, None, NOTHING, length=7, now_ms=1_000, first_id="400-0")
    assert (off.last_delivered_id, off.lag, off.oldest_unacked_id, off.lag_ms) == (
        None,
        7,
        "400-0",
        600,
    )
    empty = offset_of("t", 2, None, NOTHING, length=0, now_ms=1_000)
    assert (empty.lag, empty.lag_ms) == (0, 0)


def test_pending_summary_replies() -> None:
    assert pending_summary_from_reply([0, None, None, None]) == NOTHING
    raw = pending_summary_from_reply([2, b"1-0", b"2-0", [[b"c", b"2"]]])
    assert raw == PendingSummary(2, "1-0", "2-0")
    parsed = pending_summary_from_reply({"pending": 1, "min": b"5-0", "max": b"5-0"})
    assert parsed == PendingSummary(1, "5-0", "5-0")


def test_lag_check_bounds() -> None:
    lag = GroupLag("g", (PartitionOffset("t", 0, "1-0", 0, 12, True, "1-0", 2_500),))
    assert LagCheck(lag, None, None).ok
    assert LagCheck(lag, 12, 2.5).ok
    over = LagCheck(lag, 11, 2.0)
    assert not over.ok and len(over.violations) == 2
    d = over.to_dict()
    assert (d["ok"], d["total_lag"], d["max_lag_seconds"]) == (False, 12, 2.5)


def _dl(i: int, group: str, reason: str) -> list[object]:
    meta = [
        b"dlq.topic",
        b"t",
        b"dlq.partition",
        b"0",
        b"dlq.id",
        f"{i}-0".encode(),
        b"dlq.group",
        group.encode(),
        b"dlq.deliveries",
        b"3",
        b"dlq.reason",
        reason.encode(),
    ]
    return [f"{1000 + i}-0".encode(), [*meta, b"key", b"k", b"value", b"v"]]


class FakeDlq:
    """A dead-letter stream answering the tally's XRANGE/XLEN like the server."""

    def __init__(self) -> None:
        self.entries: list[list[object]] = []

    def answer(self, tally: DeadLetterTally) -> dict[tuple[str, str], int]:
        (_, xrange), _ = tally.commands("dlq")
        start, count = str(xrange[2]), int(xrange[5])  # type: ignore[call-overload]
        after = None if start == "-" else start[1:]
        ids = [e[0].decode() for e in self.entries]  # type: ignore[attr-defined]
        skip = (
            0
            if after is None
            else next(
                (i for i, x in enumerate(ids) if int(x.split("-")[0]) > int(after.split("-")[0])),
                len(ids),
            )
        )
        return tally.update("dlq", self.entries[skip : skip + count], len(self.entries))


def test_tally_reads_each_dead_letter_once_in_bounded_rounds() -> None:
    dlq, tally = FakeDlq(), DeadLetterTally(read_limit=4)
    dlq.entries = [_dl(i, "g", "max_deliveries" if i % 3 else "trimmed") for i in range(10)]
    first = dlq.answer(tally)
    assert sum(first.values()) == 10 and first[("", UNCLASSIFIED)] == 6
    dlq.answer(tally)
    done = dlq.answer(tally)
    assert done == {("g", "max_deliveries"): 6, ("g", "trimmed"): 4}
    assert dlq.answer(tally) == done  # nothing new: nothing read
    dlq.entries.append(_dl(10, "h", "bad-schema"))
    assert dlq.answer(tally)[("h", "bad-schema")] == 1


def test_tally_starts_over_when_entries_were_deleted() -> None:
    dlq, tally = FakeDlq(), DeadLetterTally(read_limit=100)
    dlq.entries = [_dl(i, "g", "r") for i in range(5)]
    assert dlq.answer(tally) == {("g", "r"): 5}
    del dlq.entries[1:3]  # dlq replay deletes some
    assert dlq.answer(tally) == {("", UNCLASSIFIED): 3}
    assert dlq.answer(tally) == {("g", "r"): 3}
    dlq.entries.clear()
    assert dlq.answer(tally) == {}


def test_tally_caps_distinct_reasons() -> None:
    dlq, tally = FakeDlq(), DeadLetterTally(read_limit=100, max_labels=3)
    dlq.entries = [_dl(i, "g", f"reason-{i}") for i in range(6)]
    counts = dlq.answer(tally)
    assert len(counts) == 4 and counts[("", OTHER)] == 3 and sum(counts.values()) == 6


def _scrape() -> Scrape:
    meta = TopicMeta(TopicSpec("orders", 2), 0, 1)
    offsets = (
        PartitionOffset("orders", 0, "5-0", 2, 7, True, "3-0", 1_500, 4),
        PartitionOffset("orders", 1, None, 0, 3, True, "1-0", 900),
    )
    return Scrape(
        time_ms=1_700_000_000_000,
        duration_s=0.01,
        topics=(meta,),
        partitions=(
            PartitionState("orders", 0, 9, "1-0", "9-0", 11),
            PartitionState("orders", 1, 0, None, None, None),
        ),
        groups=(GroupState("billing", "stable", 4, 2, offsets),),
        dead_letters=(DeadLetterCount("orders", 0, "billing", "trimmed", 2),),
    )


def _served(
    scrape: Scrape | None, errors: int = 0
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    class Once:
        def collect(self):  # type: ignore[no-untyped-def]
            return metric_families(scrape, errors)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_exporter_series_of_a_scrape() -> None:
    got = _served(_scrape())

    def v(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    gtp = {"group": "billing", "topic": "orders"}
    assert v("partstream_up") == 1
    assert v("partstream_consumergroup_lag", partition="0", **gtp) == 7
    assert v("partstream_consumergroup_lag_seconds", partition="0", **gtp) == 1.5
    assert v("partstream_consumergroup_lag_seconds", partition="1", **gtp) == 0.9
    assert v("partstream_consumergroup_pending", partition="0", **gtp) == 2
    assert v("partstream_consumergroup_lag_sum", **gtp) == 10
    assert v("partstream_consumergroup_current_offset", partition="0", **gtp) == 4
    assert (
        "partstream_consumergroup_current_offset",
        frozenset({"partition": "1", **gtp}.items()),
    ) not in got
    assert v("partstream_consumergroup_members", group="billing") == 2
    assert v("partstream_consumergroup_epoch", group="billing") == 4
    assert v("partstream_topic_partitions", topic="orders") == 2
    assert v("partstream_topic_partition_length", topic="orders", partition="1") == 0
    assert v("partstream_topic_partition_current_offset", topic="orders", partition="0") == 11
    assert (
        v("partstream_topic_partition_first_timestamp_seconds", topic="orders", partition="0")
        == 0.001
    )
    assert not [k for k in got if k[0].endswith("timestamp_seconds") and ("partition", "1") in k[1]]
    assert (
        v(
            "partstream_deadletter_entries",
            topic="orders",
            partition="0",
            group="billing",
            reason="trimmed",
        )
        == 2
    )
    assert v("partstream_exporter_last_scrape_timestamp_seconds") == 1_700_000_000


def test_a_failed_scrape_serves_only_up_zero_and_the_error_count() -> None:
    got = _served(None, errors=3)
    assert got == {
        ("partstream_up", frozenset()): 0,
        ("partstream_exporter_scrape_errors_total", frozenset()): 3,
    }


def test_missing_prometheus_client_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"partstream\[metrics\]"):
        require_prometheus()


def test_history_rates_and_latency_points() -> None:
    h = History(limit=3, min_gap_s=0.5)
    assert h.add(0.0, {"orders": 100}, {"g": 0}, {"g": 100}, {"g": 2.0}) is not None
    assert h.add(0.2, {"orders": 150}, {"g": 10}, {"g": 140}, {"g": 2.2}) is None  # too soon
    h.note_append([5.0, 1.0, 9.0, 3.0])
    p = h.add(2.0, {"orders": 300}, {"g": 100}, {"g": 200}, {"g": 4.0})
    assert p is not None
    assert p["produce"] == {"orders": 100.0} and p["consume"] == {"g": 50.0}
    assert p["append_ms"] == {"p50": 3.0, "p99": 9.0}
    later = h.add(3.0, {"orders": 300}, {"g": 40}, {"g": 260}, {"g": 5.0})  # a reset: no negatives
    assert later is not None and later["consume"] == {"g": 0.0} and later["append_ms"] is None
    h.add(4.0, {}, {}, {}, {})
    assert len(h.all()) == 3 and h.last() == h.all()[-1]
    assert percentile([1.0], 0.99) == 1.0 and percentile([4.0, 1.0, 2.0, 3.0], 0.5) == 2.0
