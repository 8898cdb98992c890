"""Where a record's end-to-end latency goes at a steady low rate, traced in process:
``python -m bench.e2e_trace [--url URL] [--rate 5000] [--records 20000]``.

A producer process sends ``--rate`` records/s with ``Producer.send`` (``linger_ms=0``; the
record's index and intended send time in its value) to a 16-partition topic and times each
round its sender thread exchanges with the server; this process consumes with a default
:class:`~partitions.Consumer` (``poll(1000)``) and times each exchange of its fetcher and
each poll's return. Each record is then split into legs (median and mean of each; the
medians of the legs need not add up to the median of the whole):

* ``sched``: intended send time to ``send()`` (the bench's scheduler being late);
* ``to round``: ``send()`` to the start of the producer's round that carried it (the hand-off
  to the sender thread, and waiting for the round before it);
* ``append``: that round's exchange (the write and the server's reply);
* ``landed -> fetched``: the end of the append round to the end of the consumer's exchange
  that returned the record (the consumer's own round trip, or its wait's wake-up);
* ``hand out``: the end of that exchange to ``poll()`` returning it (parsing, settling);

and the consumer's exchanges are counted by kind (with a blocking wait in front or not,
records returned or none) with their median time and commands. Times are monotonic, the
same clock in both processes. ``--hold-ms`` (an experiment) sets the producer's
``accumulator.HOLD_S``. Development tooling, not part of the package.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import struct
import time
from typing import Any

from partitions import Consumer, Producer
from partitions._client.config import ConsumerConfig, ProducerConfig
from partitions.bench.env import bench_server, drop_namespace, new_namespace
from partitions.bench.options import BenchOptions
from partitions.bench.produce import create_topics

_STAMP = struct.Struct("<dI")
TOPIC = "e2e-trace"


def _produce(server: Any, ns: str, count: int, rate: float, out: Any, hold_ms: float) -> None:
    import partitions._producer.accumulator as acc_mod
    import partitions._producer.sender as sender_mod

    if hold_ms >= 0:  # an experiment: how long a due batch waits for the round on the wire
        acc_mod.HOLD_S = hold_ms / 1000

    rounds: list[tuple[float, float]] = []
    real = sender_mod.exchange

    def timed(pool: Any, payload: list[bytes], expect: int) -> list[Any]:
        t0 = time.monotonic()
        try:
            return real(pool, payload, expect)
        finally:
            rounds.append((t0, time.monotonic()))

    sender_mod.exchange = timed
    sent = [0.0] * count
    with server.connect(ns) as conn:
        producer = Producer(conn, ProducerConfig(linger_ms=0))
        producer.send(TOPIC, b"warm-up", key=b"w").result(30)
        time.sleep(1.0)
        rounds.clear()
        step, pad = 1.0 / rate, b"x" * 88
        started, i = time.monotonic(), 0
        while i < count:
            due = min(count, int((time.monotonic() - started) / step) + 1)
            while i < due:
                sent[i] = time.monotonic()
                producer.send(
                    TOPIC, _STAMP.pack(started + i * step, i) + pad, key=b"%d" % (i % 1000)
                )
                i += 1
            time.sleep(max(0.0, started + i * step - time.monotonic()))
        producer.close()
    out.put((sent, rounds))


def _med(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def trial(url: str | None, rate: float, count: int, hold_ms: float = -1.0) -> None:
    import partitions._consumer.fetcher as fetcher_mod

    exchanges: list[tuple[float, float, int, bool]] = []  # start, end, commands, blocking
    real = fetcher_mod.Fetcher.answer

    def answer(self: Any, op: Any) -> Any:
        t0 = time.monotonic()
        try:
            return real(self, op)
        finally:
            if isinstance(op, fetcher_mod.ops.Exchange):
                exchanges.append((t0, time.monotonic(), len(op.commands), bool(op.block_ms)))
            elif isinstance(op, fetcher_mod.ops.Wait):
                exchanges.append((t0, time.monotonic(), 1, True))

    fetcher_mod.Fetcher.answer = answer  # type: ignore[method-assign]
    got: list[tuple[int, float, float]] = []  # index, intended, handed out
    with bench_server(url) as server:
        ns = new_namespace()
        proc: Any = None
        try:
            create_topics(server, ns, BenchOptions(partitions=16), TOPIC)
            with server.connect(ns) as conn:
                consumer = Consumer("e2e-trace", TOPIC, conn=conn, config=ConsumerConfig())
                consumer.poll(1, timeout=3.0)
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                proc = ctx.Process(target=_produce, args=(server, ns, count, rate, q, hold_ms))
                proc.start()
                deadline = time.monotonic() + 60
                while not consumer.poll(1, timeout=1.0) and time.monotonic() < deadline:
                    pass  # the producer's warm-up record
                exchanges.clear()
                deadline = time.monotonic() + count / rate + 30
                while len(got) < count and time.monotonic() < deadline:
                    batch = consumer.poll(1000, timeout=0.1)
                    t = time.monotonic()
                    for r in batch:
                        intended, i = _STAMP.unpack_from(r.value or b"")
                        got.append((i, intended, t))
                sent, rounds = q.get(timeout=60)
                proc.join(30)
                consumer.close()
                drop_namespace(conn)
        finally:
            if proc is not None and proc.is_alive():
                proc.kill()
    report(got, sent, rounds, exchanges)


def report(got: list[Any], sent: list[float], rounds: list[Any], exchanges: list[Any]) -> None:
    rounds.sort()
    r_start = [r[0] for r in rounds]
    exchanges.sort(key=lambda e: e[1])
    x_end = [e[1] for e in exchanges]
    legs: dict[str, list[float]] = {k: [] for k in
            ("e2e", "sched", "to round", "append", "landed -> fetched", "hand out")}  # fmt: skip
    kinds: dict[str, list[tuple[float, int]]] = {}
    delivering: set[int] = set()
    for i, intended, handed in got:
        s = sent[i]
        k = bisect.bisect_left(r_start, s)
        if k >= len(rounds):
            continue
        r0, r1 = rounds[k]
        x = bisect.bisect_right(x_end, handed) - 1
        if x < 0:
            continue
        delivering.add(x)
        legs["e2e"].append(handed - intended)
        legs["sched"].append(s - intended)
        legs["to round"].append(r0 - s)
        legs["append"].append(r1 - r0)
        legs["landed -> fetched"].append(exchanges[x][1] - r1)
        legs["hand out"].append(handed - exchanges[x][1])
    n = len(legs["e2e"])
    print(f"{n} records traced; {len(rounds)} producer rounds, {len(exchanges)} consumer exchanges")
    for name, xs in legs.items():
        mean = sum(xs) / max(1, len(xs))
        print(f"  {name:>18}: p50 {_med(xs) * 1e3:7.3f} ms  mean {mean * 1e3:7.3f} ms")
    for j, (t0, t1, ncmd, blocking) in enumerate(exchanges):
        kind = ("wait+read" if blocking else "read") + (" (records)" if j in delivering else "")
        if ncmd < 5 and not blocking:
            kind = "other"
        kinds.setdefault(kind, []).append((t1 - t0, ncmd))
    for kind, xs in sorted(kinds.items()):
        print(f"  {kind:>22}: {len(xs):6d} exchanges, p50 {_med([d for d, _ in xs]) * 1e3:.3f} ms,"
              f" commands p50 {_med([c for _, c in xs]):.0f}")  # fmt: skip
    gaps = [exchanges[j + 1][0] - exchanges[j][1] for j in range(len(exchanges) - 1)]
    print(f"  consumer time between exchanges: p50 {_med(gaps) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_trace", description=__doc__)
    parser.add_argument("--url", default=None)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument(
        "--hold-ms",
        type=float,
        default=-1.0,
        help="experiment: the producer's HOLD_S, in ms (default: as shipped)",
    )
    args = parser.parse_args()
    trial(args.url, args.rate, args.records, args.hold_ms)


if __name__ == "__main__":
    main()
