"""The producer's accumulator, without a server or a thread: ordering, retries, sealing,
one batch in flight per partition, expiry, sequence numbers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.exceptions as rex

from partitions._base.errors import ClosedError, DeliveryTimeoutError, WrongTypeError
from partitions._client.config import ProducerConfig
from partitions._producer.accumulator import HOLD_S, Accumulator, complete
from partitions._producer.batch import MAX_BATCH_BYTES, Batch, Route
from partitions._producer.router import Router

# One record's pieces (batch.RECORD_SLOTS of them: separator, fields, padding).
RECORD = (b"", b"$1\r\n0\r\n$1\r\nk\r\n$1\r\nv\r\n", b"", b"", b"", b"")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(topic: str = "t", partitions: int = 4) -> Route:
    router = Router(partitions)
    return cast(
        Route,
        SimpleNamespace(
            topic=topic,
            meta=SimpleNamespace(name=topic),
            router=router,
            tps=[(topic, p) for p in range(partitions)],
        ),
    )


def make(clock: Clock, **cfg: Any) -> Accumulator:
    settings: dict[str, Any] = {"linger_ms": 5.0, "batch_size": 2, "retry_backoff_ms": 100.0}
    settings.update(cfg)
    ids = iter(b"pid%d" % i for i in range(100))
    return Accumulator(ProducerConfig(**settings), clock, new_id=lambda: next(ids))


def fill(acc: Accumulator, r: Route, p: int, n: int) -> list[Batch]:
    batches: list[Batch] = []
    for _ in range(n):
        batch, _, _ = acc.append(r, p, None, RECORD, 3)
        if not batches or batches[-1] is not batch:
            batches.append(batch)
    return batches


def succeed(acc: Accumulator, batches: list[Batch]) -> None:
    done, errors = acc.settle(batches, [[1, b"1-%d" % i] * b.count for i, b in enumerate(batches)],
                              [], [], 0.0)  # fmt: skip
    assert errors == []
    complete(done)
    assert acc.finish(batches, [], []) == []


def test_one_batch_per_partition_in_order() -> None:
    clock, r = Clock(), route()
    acc = make(clock)
    p0 = fill(acc, r, 0, 6)  # three sealed batches of partition 0
    p1 = fill(acc, r, 1, 2)
    assert len(p0) == 3
    taken, expired, _ = acc.drain()
    assert taken == [p0[0], p1[0]] and expired == []
    # While partition 0's first batch is in flight, its later ones wait.
    assert acc.drain()[0] == []
    succeed(acc, taken)
    assert acc.drain()[0] == [p0[1]]
    succeed(acc, [p0[1]])
    assert acc.drain()[0] == [p0[2]]
    assert [b.seq for b in p0] == [1, 2, 3]
    assert p1[0].seq == 1


def test_a_backlog_goes_out_one_batch_per_partition_in_order() -> None:
    clock, r = Clock(), route()
    acc = make(clock)
    p0 = fill(acc, r, 0, 2)
    (first,) = acc.drain()[0]
    assert first is p0[0]
    p0 += fill(acc, r, 0, 6)  # a backlog of partition 0 behind its batch on the wire ...
    p1 = fill(acc, r, 1, 4)  # ... and of partition 1 after it
    assert acc.drain()[0] == [p1[0]]
    succeed(acc, [first])
    assert acc.drain()[0] == [p0[1]]  # partition 1's second waits for its first
    assert list(acc.ready) == [*p0[2:], p1[1]]
    succeed(acc, [p1[0], p0[1]])
    assert acc.drain()[0] == [p0[2], p1[1]]
    assert [b.seq for b in p0[:3]] == [1, 2, 3] and [b.seq for b in p1[:2]] == [1, 2]


def test_retried_batch_goes_before_later_batches_of_its_partition() -> None:
    clock, r = Clock(), route()
    acc = make(clock)
    first, second = fill(acc, r, 0, 4)
    (taken, _, _) = acc.drain()
    assert taken == [first]
    done, errors = acc.settle([first], [rex.ConnectionError("reset")], [], [], 0.0)
    assert done == []
    retry, failed = acc.judge(errors)
    assert retry == [first] and failed == []
    assert first.in_doubt and first.retry_at > clock.now
    acc.finish([first], retry, [])
    # During the back-off the later batch does not overtake it.
    taken, _, wake = acc.drain()
    assert taken == [] and wake == first.retry_at
    clock.now = first.retry_at
    assert acc.drain()[0] == [first]
    assert first.seq == 1  # the same sequence: the script drops it if it was appended
    succeed(acc, [first])
    assert acc.drain()[0] == [second]
    assert second.seq == 2


def test_linger_seals_an_open_batch() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=100, linger_ms=5.0)
    batch, _, wake = acc.append(r, 0, None, RECORD, 3)
    assert wake  # the first open batch wakes a sender to time its linger
    taken, _, due = acc.drain()
    assert taken == [] and due == pytest.approx(clock.now + 0.005)
    clock.now = due  # the time drain() said to look again
    assert acc.drain()[0] == [batch]


def test_with_linger_0_what_arrives_while_a_round_is_on_the_wire_goes_as_the_next_round() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=100, linger_ms=0.0)
    _, _, wake = acc.append(r, 0, None, RECORD, 3)
    assert wake  # nothing on the wire: the first record wakes a sender
    first, _, _ = acc.drain()
    assert [b.partition for b in first] == [0]
    clock.now += 0.001
    # While that round is on the wire, records of any partition wake nobody ...
    wakes = [acc.append(r, p, None, RECORD, 3)[2] for p in (0, 1, 2, 1)]
    assert wakes == [False] * 4
    # ... and an idle sender leaves them for the round's own sender, looking again only
    # once the wire would count as slow.
    taken, _, due = acc.drain()
    assert taken == [] and due == pytest.approx(first[0].taken_at + HOLD_S)
    succeed(acc, first)
    taken, _, _ = acc.drain()  # the round's sender drains again: all of it, one round
    assert sorted(b.partition for b in taken) == [0, 1, 2]
    assert sum(b.count for b in taken) == 4


def test_a_slow_wire_no_longer_holds_batches_back() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=100, linger_ms=0.0)
    acc.append(r, 0, None, RECORD, 3)
    assert len(acc.drain()[0]) == 1
    clock.now += 2 * HOLD_S
    _, _, wake = acc.append(r, 1, None, RECORD, 3)
    assert wake  # the round is on the wire past HOLD_S: an idle sender sends beside it
    assert acc.append(r, 2, None, RECORD, 3)[2] is False  # one nudge, not one per batch
    taken, _, _ = acc.drain()
    assert sorted(b.partition for b in taken) == [1, 2]
    assert acc.drain()[0] == []
    acc.append(r, 3, None, RECORD, 3)
    acc.flushing = 1  # a flush does not wait for the wire
    assert [b.partition for b in acc.drain()[0]] == [3]


def test_size_seals_by_records_and_by_bytes() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=3, linger_ms=60_000.0)
    fill(acc, r, 0, 2)
    assert acc.drain()[0] == []
    _, _, wake = acc.append(r, 0, None, RECORD, 3)
    assert wake and len(acc.drain()[0]) == 1
    big = (b"", b"x" * (MAX_BATCH_BYTES // 2 + 1), b"", b"", b"", b"")
    a, _, _ = acc.append(r, 1, None, big, 3)
    b, _, wake = acc.append(r, 1, None, big, 3)  # would pass MAX_BATCH_BYTES: the first is sealed
    assert a is not b and wake
    assert a.count == 1 and acc.ready[-1] is a


def test_flush_seals_everything() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=100, linger_ms=60_000.0)
    fill(acc, r, 0, 1)
    fill(acc, r, 1, 1)
    acc.flushing = 1
    assert len(acc.drain()[0]) == 2


def test_unsent_batch_expires_with_its_partitions_last_error() -> None:
    clock, r = Clock(), route()
    acc = make(clock, delivery_timeout_ms=1000.0, linger_ms=0.0, batch_size=1)
    first, second = fill(acc, r, 0, 2)
    assert acc.drain()[0] == [first]
    retry, _ = acc.judge([(first, rex.BusyLoadingError("loading"))])
    acc.finish([first], retry, [])
    clock.now += 1.0  # past both deadlines; the first was sent, so it is retried once more
    taken, expired, _ = acc.drain()
    assert taken == [first] and expired == [second]
    ((batch, ids, error),) = acc.expire(expired)
    assert batch is second and ids is None and isinstance(error, Exception)
    assert "not sent within delivery_timeout_ms=1000" in str(error)
    complete(acc.expire([]))
    buffered = acc.buffered
    acc.finish([], [], expired)
    assert acc.buffered == buffered - 1


def test_expiry_without_an_error_is_a_delivery_timeout() -> None:
    clock, r = Clock(), route()
    acc = make(clock, delivery_timeout_ms=1000.0, linger_ms=0.0, batch_size=1)
    _first, second = fill(acc, r, 0, 2)
    acc.drain()  # the first stays in flight (a slow server)
    clock.now += 1.0
    assert acc.drain()[1] == [second]
    assert isinstance(acc.expire([second])[0][2], DeliveryTimeoutError)


def test_refused_batch_gives_its_sequence_back_and_in_doubt_changes_the_id() -> None:
    clock, r = Clock(), route()
    acc = make(clock, linger_ms=0.0, batch_size=1)
    first, second, third = fill(acc, r, 0, 3)
    pid = acc.pid
    acc.drain()
    retry, failed = acc.judge([(first, rex.ResponseError("WRONGTYPE Operation"))])
    assert retry == [] and isinstance(failed[0][2], WrongTypeError)
    complete(failed)
    acc.finish([first], [], [])
    assert acc.drain()[0] == [second]
    assert second.seq == 1 and acc.pid == pid  # the refused batch wrote nothing
    second.in_doubt = True
    _, failed = acc.judge([(second, rex.ResponseError("NOPERM no"))])
    complete(failed)
    acc.finish([second], [], [])
    assert acc.pid != pid  # it may be in the stream: a new identity
    assert acc.drain()[0] == [third]
    assert third.seq == 1 and third.pid == acc.pid


def test_a_duplicate_reply_resolves_with_the_original_ids() -> None:
    clock, r = Clock(), route()
    acc = make(clock, linger_ms=0.0)
    (batch,) = fill(acc, r, 0, 2)
    acc.drain()
    # The original was trimmed meanwhile: the server still had its last entry only, and
    # retention trims the oldest first, so that id is the second record's.
    done, _ = acc.settle([batch], [[0, b"5-0"]], [], [], 0.0)
    assert done == [(batch, [b"0-0", b"5-0"], None)]


def test_closed_retries_are_abandoned() -> None:
    clock, r = Clock(), route()
    acc = make(clock, linger_ms=0.0)
    (batch,) = fill(acc, r, 0, 2)
    acc.drain()
    retry, _ = acc.judge([(batch, rex.ConnectionError("x"))])
    acc.closed = True
    (abandoned,) = acc.finish([batch], retry, [])
    assert abandoned[0] is batch and "closed" in str(abandoned[2])
    assert acc.buffered == 0 and acc.idle()


def test_buffer_limit_and_closed() -> None:
    clock, r = Clock(), route()
    acc = make(clock, buffer_records=3)
    fill(acc, r, 0, 2)
    assert acc.accepts()
    fill(acc, r, 0, 1)
    assert acc.full() and not acc.accepts()
    acc.closed = True
    with pytest.raises(ClosedError):
        acc.accepts()


def test_keyless_records_stick_to_a_partition_until_its_batch_seals() -> None:
    clock, r = Clock(), route()
    acc = make(clock, batch_size=2)
    a, _, _ = acc.append(r, None, None, RECORD, 3)
    b, _, _ = acc.append(r, None, None, RECORD, 3)  # seals: the sticky partition moves on
    c, _, _ = acc.append(r, None, None, RECORD, 3)
    assert a is b and a.partition == 0 and c.partition == 1


def test_a_large_round_with_nothing_on_the_wire_is_split_in_two_for_the_other_sender() -> None:
    # (accumulator.SPLIT_RECORDS): with every due partition in one round, the server would
    # idle while this process packs the next; half goes now, the rest to the other sender.
    clock, r = Clock(), route(partitions=4)
    acc = make(clock, batch_size=1000)
    batches = [fill(acc, r, p, 1000)[0] for p in range(4)]
    second = fill(acc, r, 0, 1000)[0]  # partition 0's next batch, behind its first
    assert all(b.sealed for b in [*batches, second])
    taken, _, _ = acc.drain()
    assert taken == batches[:2]  # 2,000 of 4,000 records due (the first batch of each)
    # A round is on the wire now: the rest goes whole, and partition 0 stays in order.
    rest, _, _ = acc.drain()
    assert rest == batches[2:]
    assert acc.drain()[0] == []  # partition 0's second waits for its first
    succeed(acc, taken)
    assert acc.drain()[0] == [second]
    assert [b.seq for b in (batches[0], second)] == [1, 2]


def test_a_round_under_the_split_size_goes_whole() -> None:
    clock, r = Clock(), route(partitions=4)
    acc = make(clock, batch_size=400)
    batches = [fill(acc, r, p, 400)[0] for p in range(4)]  # 1,600 records due
    assert acc.drain()[0] == batches
