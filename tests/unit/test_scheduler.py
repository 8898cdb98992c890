"""The runner's pure parts: key-ordered scheduling and the retry policy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions._base.errors import ConfigError
from partitions._base.records import Record
from partitions._base.types import TopicPartition
from partitions._runner.retry import RetryPolicy
from partitions._runner.scheduler import KeyedScheduler


def rec(partition: int, seq: int, key: bytes | None) -> Record:
    return Record("t", partition, f"{seq}-0", key, str(seq).encode(), {})


def test_one_key_runs_one_at_a_time_in_order_while_other_keys_run_beside_it() -> None:
    s = KeyedScheduler(4)
    a1, a2, b1, c1 = rec(0, 1, b"a"), rec(0, 2, b"a"), rec(0, 3, b"b"), rec(1, 4, b"c")
    s.offer([a1, a2, b1, c1])
    assert s.take() == [a1, b1, c1]  # a2 waits behind a1
    assert s.take() == []
    s.finish(b1)
    assert s.take() == []
    s.finish(a1)
    assert s.take() == [a2]
    assert s.running() == 2 and s.queued() == 0


def test_concurrency_caps_what_runs_and_a_finished_lane_goes_to_the_back() -> None:
    s = KeyedScheduler(2)
    recs = [rec(0, i, bytes([97 + i % 3])) for i in range(6)]  # keys a b c a b c
    s.offer(recs)
    first = s.take()
    assert first == recs[:2]
    s.finish(recs[0])
    # a's next record is ready again, but c waited longer: c goes first.
    assert s.take() == [recs[2]]
    s.finish(recs[1])
    assert s.take() == [recs[3]]


def test_keyless_records_keep_partition_order_and_unordered_mode_runs_them_together() -> None:
    keyed = KeyedScheduler(8)
    keyed.offer([rec(0, 1, None), rec(0, 2, None), rec(1, 3, None)])
    assert [r.id for r in keyed.take()] == ["1-0", "3-0"]
    loose = KeyedScheduler(8, ordering="unordered")
    loose.offer([rec(0, 1, b"a"), rec(0, 2, b"a")])
    assert len(loose.take()) == 2
    whole = KeyedScheduler(8, ordering="partition")
    whole.offer([rec(0, 1, b"a"), rec(0, 2, b"b"), rec(1, 3, b"a")])
    assert [r.id for r in whole.take()] == ["1-0", "3-0"]


def test_drop_forgets_queued_records_of_the_partitions_and_keeps_running_ones() -> None:
    s = KeyedScheduler(1)
    a1, a2, b1 = rec(0, 1, b"a"), rec(0, 2, b"a"), rec(1, 3, b"b")
    s.offer([a1, a2, b1])
    assert s.take() == [a1]
    assert s.drop([TopicPartition("t", 0)]) == [a2]
    assert s.running([TopicPartition("t", 0)]) == 1
    assert s.queued([TopicPartition("t", 0)]) == 0 and s.queued() == 1
    s.finish(a1)
    assert s.take() == [b1]
    assert s.partitions() == {TopicPartition("t", 1)}


def test_a_record_offered_again_while_held_is_a_duplicate_and_not_queued_twice() -> None:
    s = KeyedScheduler(2)
    a1 = rec(0, 1, b"a")
    again = rec(0, 1, b"a")  # the same entry, delivered again (a reclaim)
    assert s.offer([a1]) == []
    assert s.take() == [a1]
    assert s.offer([again]) == [again]
    assert s.queued() == 0
    s.finish(a1)
    assert s.offer([again]) == [] and s.take() == [again]  # no longer held: a new delivery


def test_a_deferred_record_lets_its_lane_go_on_and_resumes_at_the_front() -> None:
    s = KeyedScheduler(4)
    a1, a2, a3 = rec(0, 1, b"a"), rec(0, 2, b"a"), rec(0, 3, b"a")
    s.offer([a1, a2, a3])
    assert s.take() == [a1]
    s.defer(a1)
    assert s.take() == [a2] and s.deferred() == 1 and len(s) == 3
    assert s.resume(a1)
    s.finish(a2)
    assert s.take() == [a1]  # before a3
    s.finish(a1)
    assert s.take() == [a3]


def test_drop_takes_deferred_records_too_and_resume_then_reports_it() -> None:
    s = KeyedScheduler(4)
    a1 = rec(0, 1, b"a")
    s.offer([a1])
    s.take()
    s.defer(a1)
    assert s.drop([TopicPartition("t", 0)]) == [a1]
    assert not s.resume(a1) and len(s) == 0
    assert s.offer([a1]) == []  # no longer held


def test_finish_of_a_record_not_running_is_an_error_and_bad_settings_are_refused() -> None:
    s = KeyedScheduler(1)
    with pytest.raises(KeyError):
        s.finish(rec(0, 1, b"a"))
    with pytest.raises(ConfigError):
        KeyedScheduler(0)
    with pytest.raises(ConfigError):
        KeyedScheduler(2, ordering="random")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from([b"a", b"b", b"c", None])), max_size=40),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_keeps_lane_order_the_cap_and_every_record(
    items: list[tuple[int, bytes | None]], cap: int, rnd: random.Random
) -> None:
    s = KeyedScheduler(cap)
    records = [rec(p, i, k) for i, (p, k) in enumerate(items)]
    pending = list(records)
    running: list[Record] = []
    order: list[Record] = []
    while pending or running or len(s):
        if pending and (not running or rnd.random() < 0.5):
            n = rnd.randint(1, len(pending))
            s.offer(pending[:n])
            pending = pending[n:]
        started = s.take()
        order.extend(started)
        running.extend(started)
        assert len(running) <= cap
        lanes = [(r.partition, r.key) for r in running]
        assert len(lanes) == len(set(lanes)), "two records of one lane at once"
        if running:
            done = running.pop(rnd.randrange(len(running)))
            s.finish(done)
        assert len(s) == len(running) + s.queued()
    assert sorted(r.id for r in order) == sorted(r.id for r in records)
    for lane in {(r.partition, r.key) for r in records}:
        ids = [int(r.id.split("-")[0]) for r in order if (r.partition, r.key) == lane]
        assert ids == sorted(ids), f"lane {lane} out of order"


def test_retry_policy_backs_off_exponentially_with_jitter_up_to_a_cap() -> None:
    p = RetryPolicy(max_attempts=4, backoff_ms=100, multiplier=2, max_backoff_ms=300, jitter=0.5)
    assert p.delay_s(1, rand=lambda: 0.0) == pytest.approx(0.1)
    assert p.delay_s(2, rand=lambda: 0.0) == pytest.approx(0.2)
    assert p.delay_s(3, rand=lambda: 0.0) == pytest.approx(0.3)  # capped
    assert p.delay_s(2, rand=lambda: 1.0) == pytest.approx(0.1)  # half of it drawn away
    assert p.retries(ValueError(), 3) and not p.retries(ValueError(), 4)
    only = RetryPolicy(retry_on=(TimeoutError,))
    assert only.retries(TimeoutError(), 1) and not only.retries(ValueError(), 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"backoff_ms": -1},
        {"multiplier": 0.5},
        {"jitter": 2},
        {"retry_on": (ValueError, "oops")},
    ],
)
def test_retry_policy_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
