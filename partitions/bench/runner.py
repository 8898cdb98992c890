"""``partstream bench runner``: key-ordered concurrency against one record at a time.

An I/O-bound handler (it waits ``handler_ms`` per record, like an HTTP call) over ``records``
records of ``keys`` keys spread over ``partitions`` partitions, run by :func:`partitions.run`
at each concurrency in turn, each in a fresh group reading the same topic from the start.
Per run: wall time from start to the last record handled, records/s, the server's CPU per
record (``INFO cpu``, before and after), and whether every key's records were handled in
order and each exactly once. The figure of merit is the speed-up of the highest concurrency
over the lowest; the target (issue's bar, kept here as a number) is 10x at 32 vs 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.records import Record
from partitions._client.connection import Connection
from partitions._producer.producer import Producer
from partitions._runner.runner import Runner
from partitions.bench.env import (
    bench_server,
    drop_namespace,
    environment,
    new_namespace,
    server_cpu_s,
)

SPEEDUP_TARGET = 10.0


@dataclass(frozen=True, slots=True)
class RunnerBenchOptions:
    records: int = 20_000
    partitions: int = 4
    keys: int = 400
    handler_ms: float = 5.0
    concurrency: tuple[int, ...] = (1, 32)
    url: str | None = None


class _OrderedHandler:
    """Waits, then checks the record is its key's next (values are the send sequence)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.last: dict[bytes | None, int] = {}
        self.handled = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.done_at = 0.0

    def __call__(self, record: Record) -> None:
        time.sleep(self.delay_s)
        seq = int(record.value or b"0")
        with self.lock:
            prev = self.last.get(record.key, -1)
            if seq == prev:
                self.duplicates += 1
            elif seq < prev:
                self.out_of_order += 1
            self.last[record.key] = max(prev, seq)
            self.handled += 1
            self.done_at = time.monotonic()


def run_runner_bench(opts: RunnerBenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the benchmark; ``say`` gets the text lines as they come. Returns the result."""
    namespace = new_namespace()
    with bench_server(opts.url) as server, server.connect(namespace) as conn:
        try:
            TopicAdmin(conn).create(TopicSpec("work", partitions=opts.partitions))
            with Producer(conn) as producer:
                for i in range(opts.records):
                    producer.send("work", str(i), key=f"k{i % opts.keys}")
            say(
                f"{opts.records:,} records, {opts.keys} keys, {opts.partitions} partitions, "
                f"handler waits {opts.handler_ms:g} ms per record"
            )
            runs = [_one_run(conn, opts, c, say) for c in opts.concurrency]
            env = environment(conn, server)
        finally:
            drop_namespace(conn)
    slowest, fastest = runs[0], runs[-1]
    speedup = slowest["seconds"] / fastest["seconds"] if fastest["seconds"] else 0.0
    ordered = all(r["out_of_order"] == 0 and r["duplicates"] == 0 for r in runs)
    complete = all(r["handled"] == opts.records for r in runs)
    met = speedup >= SPEEDUP_TARGET and ordered and complete
    say(
        f"speed-up, concurrency {fastest['concurrency']} vs {slowest['concurrency']}: "
        f"{speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x with per-key order: "
        f"{'met' if met else 'NOT met'})"
    )
    return {
        "mode": "runner",
        "config": {**asdict(opts), "url": "embedded" if opts.url is None else "given"},
        "runs": runs,
        "speedup": round(speedup, 2),
        "per_key_order_kept": ordered,
        "every_record_once": complete,
        "target": {"speedup_at_least": SPEEDUP_TARGET, "met": met},
        "env": env,
    }


def _one_run(
    conn: Connection, opts: RunnerBenchOptions, concurrency: int, say: Callable[[str], None]
) -> dict[str, Any]:
    handler = _OrderedHandler(opts.handler_ms / 1000)
    runner = Runner(handler, "work", f"bench-c{concurrency}", concurrency=concurrency, conn=conn)
    worker = threading.Thread(target=lambda: runner.run(signals=False), daemon=True)
    cpu0 = server_cpu_s(conn)
    t0 = time.monotonic()
    worker.start()
    # Bounded: twice the serial time the handler alone needs, plus a minute.
    deadline = t0 + 2 * opts.records * opts.handler_ms / 1000 / concurrency + 60
    while handler.handled < opts.records and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    seconds = (handler.done_at or time.monotonic()) - t0
    runner.stop.set()
    worker.join(60)
    cpu_us = (server_cpu_s(conn) - cpu0) * 1e6 / max(1, handler.handled)
    result = {
        "concurrency": concurrency,
        "handled": handler.handled,
        "seconds": round(seconds, 3),
        "records_per_s": round(handler.handled / seconds, 1) if seconds else 0.0,
        "server_us_per_record": round(cpu_us, 2),
        "out_of_order": handler.out_of_order,
        "duplicates": handler.duplicates,
    }
    say(
        f"concurrency {concurrency}: {handler.handled:,} records in {seconds:.2f} s, "
        f"{result['records_per_s']:,.0f} records/s, server {cpu_us:.1f} us/record, "
        f"out of order {handler.out_of_order}, duplicates {handler.duplicates}"
    )
    return result
