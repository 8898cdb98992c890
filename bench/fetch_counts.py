"""What a consumer at a steady low rate costs per record, in counts that hold on a noisy
machine: ``python -m bench.fetch_counts [--url URL] [--rate 5000] [--records 30000]``.

A producer process sends ``--rate`` records/s (``linger_ms=0``, one ``send()`` per record,
the intended send time in the value) to a 16-partition topic; this process consumes them
with a default :class:`~partitions.Consumer` (``poll(1000)``) and prints, per record
consumed: the server's read and write events (``INFO stats`` ``total_reads_processed`` /
``total_writes_processed``: one per packet batch the server read, one per reply write), its
commands (``INFO commandstats``, each command's calls per record), the consumer process's
CPU, and the latency from the intended send time (p50/p99: wall time, which moves with the
machine; the counts do not). The counts include the producer's commands (XADD, its commit),
the same for any consumer code. Without ``--url`` it starts a private embedded Valkey (as
``partstream bench`` does). Run it from a worktree of another commit to compare code.

Development tooling, not part of the package.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import struct
import time
from typing import Any

from partitions import Consumer, Producer
from partitions._client.config import ConsumerConfig, ProducerConfig
from partitions.bench.env import bench_server, drop_namespace, new_namespace
from partitions.bench.options import BenchOptions
from partitions.bench.produce import create_topics

_STAMP = struct.Struct("<d")
TOPIC = "fetch-counts"


def _produce(server: Any, ns: str, count: int, rate: float) -> None:
    with server.connect(ns) as conn:
        producer = Producer(conn, ProducerConfig(linger_ms=0))
        producer.send(TOPIC, b"warm-up", key=b"w").result(30)
        time.sleep(1.0)
        step, pad = 1.0 / rate, b"x" * 92
        started, i = time.monotonic(), 0
        while i < count:
            due = min(count, int((time.monotonic() - started) / step) + 1)
            while i < due:
                producer.send(TOPIC, _STAMP.pack(started + i * step) + pad, key=b"%d" % (i % 1000))
                i += 1
            time.sleep(max(0.0, started + i * step - time.monotonic()))
        producer.close()


def _calls(conn: Any) -> dict[str, int]:
    info = conn.client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def trial(url: str | None, rate: float, count: int) -> None:
    with bench_server(url) as server:
        ns = new_namespace()
        proc: Any = None
        try:
            create_topics(server, ns, BenchOptions(partitions=16), TOPIC)
            with server.connect(ns) as conn:
                consumer = Consumer("fetch-counts", TOPIC, conn=conn, config=ConsumerConfig())
                consumer.poll(1, timeout=3.0)
                ctx = mp.get_context("spawn")
                proc = ctx.Process(target=_produce, args=(server, ns, count, rate))
                proc.start()
                deadline = time.monotonic() + 60
                while not consumer.poll(1, timeout=1.0) and time.monotonic() < deadline:
                    pass  # the producer's warm-up record
                stats0, calls0 = conn.client.info("stats"), _calls(conn)
                cpu0 = time.process_time()
                lat: list[float] = []
                deadline = time.monotonic() + count / rate + 30
                while len(lat) < count and time.monotonic() < deadline:
                    for r in consumer.poll(1000, timeout=0.1):
                        lat.append((time.monotonic() - _STAMP.unpack_from(r.value or b"")[0]) * 1e3)
                cpu = time.process_time() - cpu0
                stats1, calls1 = conn.client.info("stats"), _calls(conn)
                proc.join(30)
                consumer.close()
                drop_namespace(conn)
        finally:
            if proc is not None and proc.is_alive():
                proc.kill()
    n = len(lat)
    if n == 0:
        raise SystemExit("no record was consumed")
    lat.sort()

    def per(key: str) -> float:
        return (int(stats1[key]) - int(stats0[key])) / n

    print(
        f"{n} records at {rate:,.0f}/s: per record: server reads"
        f" {per('total_reads_processed'):.2f}, writes {per('total_writes_processed'):.2f}, commands"
        f" {per('total_commands_processed'):.2f}; consumer CPU {cpu * 1e6 / n:.1f} us;"
        f" latency p50 {lat[n // 2]:.2f} ms, p99 {lat[int(n * 0.99)]:.2f} ms"
    )
    calls = {k: (v - calls0.get(k, 0)) / n for k, v in calls1.items()}
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(calls.items()) if v >= 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch_counts", description=__doc__)
    parser.add_argument("--url", default=None)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--records", type=int, default=30000)
    parser.add_argument("--trials", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.trials):
        trial(args.url, args.rate, args.records)


if __name__ == "__main__":
    main()
