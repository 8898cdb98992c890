"""Exactly-once pipelines on a real server (the embedded Valkey, Redis 7, and the local
cluster, where ``auto`` is the idempotent mode): outputs and the input's ack commit together,
a replay writes nothing twice, a fenced-off member's commit is refused, bad input writes
nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from partitions import (
    AsyncConsumer,
    AsyncPipeline,
    ClientConfig,
    ConfigError,
    Connection,
    ConsumerConfig,
    NotOwnerError,
    Output,
    Pipeline,
    Record,
    connect_async,
    transform,
)
from partitions._base.errors import PartstreamError, WrongTypeError
from partitions._base.fence import claim_fence
from partitions._base.steps import drive
from partitions._consumer.consumer import Consumer
from partitions._pipeline.pipeline import Commit
from tests.helpers import FAST, drain, drain_async, layout, produce, topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MANUAL = ConsumerConfig(auto_commit=False)


def consumer(conn: Connection, **kw: Any) -> Consumer:
    kw.setdefault("group_settings", FAST)
    kw.setdefault("config", MANUAL)
    return Consumer(kw.pop("group", "g"), kw.pop("topics", "in"), conn=conn, **kw)


@pytest.fixture
def topics(conn: Connection) -> Iterator[None]:
    topic(conn, "in", 2)
    topic(conn, "out", 3)
    yield


def outputs(rec: Record, fanout: int = 2) -> list[Output]:
    """Two outputs per input, keyed so they usually land in different output partitions."""
    return [
        Output("out", {"src": f"{rec.partition}:{rec.id}", "j": j}, key=f"{rec.key!r}-{j}")
        for j in range(fanout)
    ]


def written(conn: Connection, name: str = "out", n: int = 3) -> list[bytes]:
    out = []
    for p in range(n):
        out += [f[b"value"] for _, f in conn.client.xrange(conn.keys.stream(layout(conn, name), p))]
    return out


def pending(conn: Connection, name: str = "in", n: int = 2) -> int:
    return sum(
        conn.client.xpending(conn.keys.stream(layout(conn, name), p), "g")["pending"]
        for p in range(n)
    )


def test_outputs_and_ack_commit_once_and_a_retry_writes_nothing(
    conn: Connection, topics: None
) -> None:
    produce(conn, "in", 20)
    with consumer(conn) as c, Pipeline(c, conn) as pipe:
        assert pipe.mode == ("idempotent" if conn.is_cluster else "atomic")
        got = drain(c, 20)
        for rec in got:
            done = pipe.send_and_commit(rec, outputs(rec))
            assert not done.duplicate and all(w is not None for w in done.written)
            again = pipe.send_and_commit(rec, outputs(rec))  # a retry after a lost reply
            assert again.duplicate and again.written == (None, None)
        assert pending(conn) == 0
    values = written(conn)
    assert len(values) == 40 and len(set(values)) == 40


@pytest.mark.parametrize("mode", ["auto", "idempotent"])
def test_a_crash_between_outputs_and_ack_is_replayed_without_duplicates(
    conn: Connection, topics: None, mode: str
) -> None:
    produce(conn, "in", 6, keys=1)  # one key: one input partition, in order
    with consumer(conn) as c, Pipeline(c, conn, mode=mode) as pipe:  # type: ignore[arg-type]
        first = drain(c, 6)
        if pipe.mode == "idempotent":
            # Run the commit's steps up to the ack, then drop them: a kill -9 right there.
            steps = pipe.core.steps(first[0], outputs(first[0]), c.fence("in", first[0].partition))
            with pytest.raises(_Crash):
                drive(steps, lambda a: _crash() if isinstance(a, Commit) else pipe._answer(a))
            assert len(written(conn)) == 2 and pending(conn) == 6
    # A new member takes over: the dead one's unacked records come again, in order.
    with consumer(conn) as c2, Pipeline(c2, conn, mode=mode) as pipe2:  # type: ignore[arg-type]
        again = drain(c2, 6)
        assert [r.id for r in again] == [r.id for r in first]
        results = [pipe2.send_and_commit(r, outputs(r)) for r in again]
    assert results[0].duplicate == (pipe.mode == "idempotent")
    assert not any(r.duplicate for r in results[1:])
    values = written(conn)
    assert len(values) == 12 and len(set(values)) == 12
    assert pending(conn) == 0


class _Crash(Exception):
    pass


def _crash() -> None:
    raise _Crash


def test_a_fenced_off_member_is_refused_and_the_outputs_stay_exactly_once(
    conn: Connection, topics: None
) -> None:
    topic(conn, "one", 1)
    produce(conn, "one", 3, keys=1)
    c = consumer(conn, topics="one")
    pipe = Pipeline(c, conn)
    try:
        got = drain(c, 3)
        pipe.send_and_commit(got[0], outputs(got[0]))
        # A newer grant takes the input partition's fence (what a new owner does).
        assert claim_fence(conn.client, conn.keys, "g", layout(conn, "one"), 0, "intruder", 2**52)
        with pytest.raises(NotOwnerError):
            pipe.send_and_commit(got[1], outputs(got[1]))
        after = written(conn)
        if pipe.mode == "atomic":
            assert len(after) == 2  # the fenced-off member wrote nothing
        else:
            # Idempotent: its outputs went first, its ack was refused; the new owner's replay
            # of the same record is dropped, so each output is there once.
            assert len(after) == 4
            # The new owner's replay (its writes carry the same source: group g, one/0).
            for rec in got[:2]:
                done = drive(pipe.core.steps(rec, outputs(rec), "new 1"), _no_ack(pipe))
                assert done.duplicate
            assert len(written(conn)) == 4
        assert conn.client.xpending(conn.keys.stream(layout(conn, "one"), 0), "g")["pending"] == 2
    finally:
        c.close()


def _no_ack(pipe: Pipeline) -> Any:
    return lambda a: "new 1" if isinstance(a, Commit) else pipe._answer(a)


def test_bad_outputs_write_nothing_and_leave_the_input_pending(
    conn: Connection, topics: None
) -> None:
    produce(conn, "in", 1)
    with consumer(conn) as c, Pipeline(c, conn) as pipe:
        (rec,) = drain(c, 1)
        with pytest.raises(ConfigError):
            pipe.send_and_commit(
                rec, [Output("out", "ok", key="a"), Output("out", "x", partition=9)]
            )
        with pytest.raises(PartstreamError):
            pipe.send_and_commit(rec, [Output("nope", "x")])
        if pipe.mode == "atomic":
            # A key of another type in one output partition: refused before any write,
            # also to the other output partitions.
            conn.client.set(conn.keys.stream(layout(conn, "out"), 2), "not a stream")
            with pytest.raises(WrongTypeError):
                pipe.send_and_commit(
                    rec, [Output("out", "a", partition=0), Output("out", "b", partition=2)]
                )
            conn.client.delete(conn.keys.stream(layout(conn, "out"), 2))
        assert written(conn) == [] and pending(conn) == 1


def test_the_consumer_must_leave_acking_to_the_pipeline(conn: Connection, topics: None) -> None:
    with (
        consumer(conn, config=ConsumerConfig()) as c,
        pytest.raises(ConfigError, match="auto_commit"),
    ):
        Pipeline(c, conn)


def test_transform_runs_until_stopped_and_writes_each_output_once(
    conn: Connection, topics: None
) -> None:
    produce(conn, "in", 200)
    stop = threading.Event()
    result: list[Any] = []

    def run() -> None:
        result.append(
            transform(
                lambda r: outputs(r),
                "in",
                "g",
                conn=conn,
                stop=stop,
                group_settings=FAST,
                handle_signals=False,
            )
        )

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: len(written(conn)) >= 400, 30, "400 outputs")
        wait_for(lambda: pending(conn) == 0, 10, "inputs acked")
    finally:
        stop.set()
        t.join(20)
    assert not t.is_alive()
    (stats,) = result
    assert stats.committed == 200 and stats.outputs == 400 and stats.duplicates == 0
    values = written(conn)
    assert len(values) == 400 and len(set(values)) == 400


def test_a_transform_error_dead_letters_the_input_when_asked(
    conn: Connection, topics: None
) -> None:
    produce(conn, "in", 10, keys=1)
    stop = threading.Event()

    def fn(r: Record) -> list[Output]:
        if r.value == b"v3":
            raise ValueError("bad input")
        return outputs(r, 1)

    t = threading.Thread(
        target=lambda: transform(
            fn,
            "in",
            "g",
            conn=conn,
            stop=stop,
            on_error="dead_letter",
            group_settings=FAST,
            handle_signals=False,
        )
    )
    t.start()
    try:
        wait_for(lambda: len(written(conn)) >= 9 and pending(conn) == 0, 30, "9 outputs")
    finally:
        stop.set()
        t.join(20)
    dead = [
        f
        for p in range(2)
        for _, f in conn.client.xrange(conn.keys.dlq(layout(conn, "in"), p))
        if b"dlq.id" in f
    ]
    assert [f[b"dlq.reason"] for f in dead] == [b"transform_error"]
    assert len(written(conn)) == 9


def test_owned_partitions_only(conn: Connection, topics: None) -> None:
    produce(conn, "in", 1)
    with consumer(conn) as c, Pipeline(c, conn) as pipe:
        (rec,) = drain(c, 1)
        ghost = Record("in", rec.partition, rec.id, rec.key, rec.value, {})
        c.close()  # releases its partitions: the grant is gone
        assert c.fence("in", rec.partition) is None
        with pytest.raises(NotOwnerError):
            pipe.send_and_commit(ghost, outputs(ghost))
    assert written(conn) == []


@pytest.mark.parametrize("mode", ["auto", "idempotent"])
def test_the_async_pipeline_commits_exactly_once_too(
    conn: Connection, client_config: ClientConfig, topics: None, mode: str
) -> None:
    produce(conn, "in", 20)

    async def main() -> list[Any]:
        aconn = await connect_async(client_config)
        try:
            async with AsyncConsumer(aconn, "g", "in", config=MANUAL, group_settings=FAST) as c:
                pipe = AsyncPipeline(c, aconn, mode=mode)  # type: ignore[arg-type]
                got = await drain_async(c, 20)
                done = [await pipe.send_and_commit(r, outputs(r)) for r in got]
                done += [await pipe.send_and_commit(r, outputs(r)) for r in got]
                return done
        finally:
            await aconn.aclose()

    done = asyncio.run(main())
    assert [d.duplicate for d in done] == [False] * 20 + [True] * 20
    values = written(conn)
    assert len(values) == 40 and len(set(values)) == 40
    assert pending(conn) == 0
