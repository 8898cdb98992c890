"""What rounds the producer of ``partstream bench produce`` sends, and what they cost the server:
``python -m bench.produce_rounds [--url URL] [--records 300000] [--trials 3]``.

Runs the bench's own produce worker (:func:`partitions.bench.produce.produce_partstream`: one
``send()`` per record, ``batch_size`` 1000, ``linger_ms`` 5, 16 partitions, the same records)
in this process, with the sender's MULTI packing wrapped to count each MULTI's batches and
records (one MULTI a round until ``MULTI_MAX_RECORDS`` split rounds), and reads the server's
``INFO commandstats`` and ``INFO cpu`` before and after. It prints the distribution of
records and batches per MULTI, the commands per record and the server's microseconds per
command: where a round's server time goes. Without ``--url`` it starts a private embedded
Valkey (as the bench does).

Development tooling, not part of the package.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import Any

from partitions._producer import sender as sender_mod
from partitions.bench.env import bench_server, drop_namespace, new_namespace, server_cpu_s
from partitions.bench.options import BenchOptions
from partitions.bench.produce import (
    PS_TOPIC,
    create_topics,
    produce_partstream,
    run_redis_benchmark,
)
from partitions.bench.workers import Counters


def _stats(conn: Any) -> dict[str, tuple[int, int]]:
    info = conn.client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in info.items()}


def _quantiles(xs: list[int]) -> str:
    if not xs:
        return "-"
    qs = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return f"mean {statistics.fmean(xs):.0f}, p10 {qs[0]:.0f}, median {qs[4]:.0f}, p90 {qs[8]:.0f}"


def _io(conn: Any) -> tuple[float, float, int, int]:
    """The server's (system CPU s, user CPU s, reads, reply writes) so far (INFO)."""
    i = conn.client.info()
    reads, writes = i.get("total_reads_processed", 0), i.get("total_writes_processed", 0)
    return float(i["used_cpu_sys"]), float(i["used_cpu_user"]), int(reads), int(writes)


def _print_io(label: str, a: tuple[float, float, int, int], b: tuple[float, float, int, int],
              records: int) -> None:  # fmt: skip
    print(f"{label}: server system {(b[0] - a[0]) * 1e6 / records:.2f} + user "
          f"{(b[1] - a[1]) * 1e6 / records:.2f} us/record, {(b[2] - a[2]) / records:.4f} reads "
          f"and {(b[3] - a[3]) / records:.4f} writes a record")  # fmt: skip


def trial(url: str | None, records: int, rb: bool = False) -> None:
    rounds: list[tuple[int, int]] = []
    original = getattr(sender_mod, "packed_multi")  # noqa: B009 (not exported)

    def counting(batches: list[Any]) -> bytes:
        rounds.append((len(batches), sum(b.count for b in batches)))
        out: bytes = original(batches)
        return out

    opts = BenchOptions(records=records)
    with bench_server(url) as server:
        ns = new_namespace()
        try:
            create_topics(server, ns, opts, PS_TOPIC)
            with server.connect(ns) as conn:
                setattr(sender_mod, "packed_multi", counting)  # noqa: B010
                try:
                    before, cpu0, io0 = _stats(conn), server_cpu_s(conn), _io(conn)
                    produce_partstream(0, Counters([0], [0.0, 0.0, 0.0]), lambda: None,
                                       (server, ns, opts, PS_TOPIC, records, 0))  # fmt: skip
                    after, cpu1, io1 = _stats(conn), server_cpu_s(conn), _io(conn)
                    if rb:
                        rb0 = _io(conn)
                        run_redis_benchmark(server, ns, replace(opts, records=records))
                        rb1 = _io(conn)
                finally:
                    setattr(sender_mod, "packed_multi", original)  # noqa: B010
        finally:
            with server.connect(ns) as conn:
                drop_namespace(conn)
    multi = [r for _, r in rounds]
    print(f"MULTIs: {len(rounds)}; records a MULTI: {_quantiles(multi)}; "
          f"batches a MULTI: {_quantiles([b for b, _ in rounds])}; "
          f"records a batch: {sum(multi) / max(1, sum(b for b, _ in rounds)):.1f}")  # fmt: skip
    print(f"server CPU: {(cpu1 - cpu0) * 1e6 / records:.2f} us/record (INFO cpu)")
    _print_io("partstream", io0, io1, records)
    if rb:
        _print_io("redis-benchmark -P 1000 -c 1", rb0, rb1, records)
    total = 0
    rows = []
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 > 0:
            rows.append((usec - u0, name, calls - c0))
            total += usec - u0
    for usec, name, calls in sorted(rows, reverse=True)[:8]:
        print(f"  {name:<12} {calls:>8} calls, {calls / records:6.3f}/record, "
              f"{usec / calls:7.2f} us/call, {usec / records:5.2f} us/record")  # fmt: skip
    print(f"  commandstats total {total / records:.2f} us/record")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--redis-benchmark", action="store_true",
                    help="also run redis-benchmark's XADD pipeline after each trial, the same "
                    "server counters around it")  # fmt: skip
    args = ap.parse_args()
    for _ in range(args.trials):
        trial(args.url, args.records, args.redis_benchmark)


if __name__ == "__main__":
    main()
