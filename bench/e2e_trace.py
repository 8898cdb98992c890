"""Where a record's end-to-end latency goes at a steady low rate, traced in process:
``python -m bench.e2e_trace [--url URL] [--rate 5000] [--records 20000]``.

A producer process sends ``--rate`` records/s with ``Producer.send`` (``linger_ms=0``; the
record's index and intended send time in its value) to a 16-partition topic and times each
round its sender thread exchanges with the server; this process consumes with a default
:class:`~partitions.Consumer` (``poll(1000)``) and times each exchange of its fetcher and
each poll's return. Each record is then split into legs (median, mean and 99th percentile of
each, and each leg's mean over the records at or past the whole's p99: where the tail goes; the
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


def _produce(
    server: Any, ns: str, count: int, rate: float, out: Any, hold_ms: float, multi_min: int
) -> None:
    import partitions._producer.accumulator as acc_mod
    import partitions._producer.sender as sender_mod

    if hold_ms >= 0:  # an experiment: how long a due batch waits for the round on the wire
        acc_mod.HOLD_S = hold_ms / 1000
    if multi_min > 0:  # an experiment: the smallest batch that goes as MULTI + native XADDs
        sender_mod.MULTI_MIN_RECORDS = multi_min

    rounds: list[tuple[float, float]] = []

    def timing(real: Any) -> Any:
        def timed(where: Any, payload: list[bytes], expect: int) -> list[Any]:
            t0 = time.monotonic()
            try:
                return real(where, payload, expect)
            finally:
                rounds.append((t0, time.monotonic()))

        return timed

    # (a pool a round on a cluster; on one server a connection the sender keeps while busy)
    sender_mod.exchange = timing(sender_mod.exchange)
    sender_mod.exchange_on = timing(sender_mod.exchange_on)
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


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def trial(
    url: str | None, rate: float, count: int, hold_ms: float = -1.0, multi_min: int = 0
) -> None:
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
    import gc

    collections: list[tuple[float, float, int]] = []  # this process's: start, end, generation
    gc_at = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_at[0] = time.monotonic()
        else:
            collections.append((gc_at[0], time.monotonic(), info["generation"]))

    gc.callbacks.append(on_gc)
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
                proc = ctx.Process(
                    target=_produce, args=(server, ns, count, rate, q, hold_ms, multi_min)
                )
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
    gc.callbacks.remove(on_gc)
    report(got, sent, rounds, exchanges)
    t_0 = sent[0] if sent else 0.0
    for t0, t1, gen in collections:
        if gen == 2 or t1 - t0 > 0.002:
            took = (t1 - t0) * 1e3
            print(f"  consumer process gc at {t0 - t_0:7.3f} s: generation {gen}, {took:.3f} ms")


def report(got: list[Any], sent: list[float], rounds: list[Any], exchanges: list[Any]) -> None:
    rounds.sort()
    r_start = [r[0] for r in rounds]
    exchanges.sort(key=lambda e: e[1])
    x_end = [e[1] for e in exchanges]
    legs: dict[str, list[float]] = {k: [] for k in
            ("e2e", "sched", "to round", "append", "landed -> fetched", "hand out")}  # fmt: skip
    kinds: dict[str, list[tuple[float, int]]] = {}
    delivering: set[int] = set()
    fetched_by: list[int] = []  # per traced record, the exchange that returned it
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
        fetched_by.append(x)
    n = len(legs["e2e"])
    print(f"{n} records traced; {len(rounds)} producer rounds, {len(exchanges)} consumer exchanges")
    # The tail: the records at or past the whole's p99, and each leg's mean over them.
    cut = _pct(legs["e2e"], 0.99)
    tail = [j for j, e in enumerate(legs["e2e"]) if e >= cut]
    for name, xs in legs.items():
        mean = sum(xs) / max(1, len(xs))
        in_tail = sum(xs[j] for j in tail) / max(1, len(tail))
        print(
            f"  {name:>18}: p50 {_med(xs) * 1e3:7.3f} ms  mean {mean * 1e3:7.3f} ms"
            f"  p99 {_pct(xs, 0.99) * 1e3:7.3f} ms  mean in the e2e tail {in_tail * 1e3:7.3f} ms"
        )
    for j, (t0, t1, ncmd, blocking) in enumerate(exchanges):
        kind = ("wait+read" if blocking else "read") + (" (records)" if j in delivering else "")
        if ncmd < 5 and not blocking:
            kind = "other"
        kinds.setdefault(kind, []).append((t1 - t0, ncmd))
    for kind, xs in sorted(kinds.items()):
        print(f"  {kind:>22}: {len(xs):6d} exchanges, p50 {_med([d for d, _ in xs]) * 1e3:.3f} ms,"
              f" commands p50 {_med([c for _, c in xs]):.0f}")  # fmt: skip
    gaps = [exchanges[j + 1][0] - exchanges[j][1] for j in range(len(exchanges) - 1)]
    print(
        f"  consumer time between exchanges: p50 {_med(gaps) * 1e3:.3f} ms"
        f"  p99 {_pct(gaps, 0.99) * 1e3:.3f} ms  max {max(gaps, default=0) * 1e3:.3f} ms"
    )
    if exchanges and sent:
        # The slowest exchanges and gaps once the producer runs (not its warm-up's idle waits).
        t_0 = sent[0]
        busy = [j for j in range(len(exchanges)) if exchanges[j][0] >= t_0]
        slow = sorted(busy, key=lambda j: exchanges[j][0] - exchanges[j][1])[:3]
        slow += sorted(busy[1:], key=lambda j: exchanges[j - 1][1] - exchanges[j][0])[:3]
        for j in sorted(set(slow)):
            t0, t1, ncmd, blk = exchanges[j]
            gap = t0 - exchanges[j - 1][1] if j else 0.0
            ms = (t1 - t0) * 1e3
            print(
                f"  slow exchange at {t0 - t_0:7.3f} s: {ms:.3f} ms, {ncmd} commands,"
                f" {'a wait' if blk else 'no wait'}, {gap * 1e3:.3f} ms after the one before"
            )
    # The tail's consumer leg: the exchange that returned each record (how long it took, its
    # kind) and the consumer's own time before it (the gap since the exchange before).
    took = [exchanges[fetched_by[j]][1] - exchanges[fetched_by[j]][0] for j in tail]
    before = [exchanges[x][0] - exchanges[x - 1][1] if x > 0 else 0.0
              for x in (fetched_by[j] for j in tail)]  # fmt: skip
    blocking = sum(1 for j in tail if exchanges[fetched_by[j]][3])
    print(
        f"  e2e tail ({len(tail)} records): its exchange p50 {_med(took) * 1e3:.3f} ms"
        f" max {max(took, default=0) * 1e3:.3f} ms; gap before it p50 {_med(before) * 1e3:.3f}"
        f" ms max {max(before, default=0) * 1e3:.3f} ms; {blocking} after a wait"
    )


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
    parser.add_argument(
        "--multi-min",
        type=int,
        default=0,
        help="experiment: the sender's MULTI_MIN_RECORDS (default: as shipped)",
    )
    args = parser.parse_args()
    trial(args.url, args.rate, args.records, args.hold_ms, args.multi_min)


if __name__ == "__main__":
    main()
