"""Load runs in worker processes; the parent only starts them, reports windows and collects.

Every measured side (partstream or a baseline) runs in its own forked processes, so the
parent's reporting never competes with the hot loop for the interpreter. A worker sets
itself up (connects, builds its records), says it is ready, waits for the common start
signal, runs, and sends back its result. While they run, workers publish their progress in
shared counters (records done, latency sum / count / max), which the parent turns into one
line per reporting window and, on a terminal, a live progress line.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from partitions._base.errors import PartstreamError
from partitions.bench.stats import Latency, RunResult, Window

# Seconds a worker may take to set up (connect, join, build records) before the run fails.
SETUP_TIMEOUT_S = 120.0

_ctx = mp.get_context("fork")


class Counters:
    """Progress of one worker, in shared memory: written by the worker, read by the parent.

    Unlocked on purpose: one writer per slot, and a torn read only blurs one window.
    """

    __slots__ = ("_all", "_d", "_i")

    def __init__(self, ints: Any, doubles: Any, all_ints: list[Any] | None = None) -> None:
        self._i = ints  # [records done]
        self._d = doubles  # [latency sum ms, latency samples, latency max ms]
        self._all = all_ints if all_ints is not None else [ints]

    def done(self, n: int) -> None:
        self._i[0] = n

    def latency(self, ms: float) -> None:
        d = self._d
        d[0] += ms
        d[1] += 1.0
        if ms > d[2]:
            d[2] = ms

    @property
    def records(self) -> int:
        return int(self._i[0])

    def total(self) -> int:
        """Records done by all workers of the run (for a shared stop condition)."""
        return sum(int(a[0]) for a in self._all)


@dataclass(slots=True)
class WorkerOutput:
    """What a worker function returns: its records, span (monotonic s) and latencies (ms)."""

    records: int
    started: float
    ended: float
    latencies: array[float]
    extra: dict[str, Any] | None = None
    cpu_s: float = 0.0  # the worker process's CPU time from the start signal (set for it)


def _cpu_s() -> float:
    """This process's user + system CPU seconds, all its threads."""
    t = os.times()
    return t.user + t.system


# fn(index, counters, ready, arg) -> WorkerOutput; ``ready()`` blocks until the start signal.
WorkerFn = Callable[[int, Counters, Callable[[], None], Any], WorkerOutput]


def _worker_main(
    fn: WorkerFn, index: int, ints: list[Any], doubles: Any, go: Any, out: Any, arg: Any
) -> None:
    cpu0 = [0.0]

    def ready() -> None:
        out.put(("ready", index, None))
        go.wait()
        cpu0[0] = _cpu_s()

    try:
        res = fn(index, Counters(ints[index], doubles, ints), ready, arg)
        res.cpu_s = _cpu_s() - cpu0[0]
        out.put(("done", index, res))
    except BaseException as err:  # report anything, the parent decides
        out.put(("error", index, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        out.close()
        out.join_thread()
        sys.stdout.flush()


class Progress:
    """Where window lines and the live progress line go (the caller decides how to print)."""

    def __init__(
        self,
        on_window: Callable[[str, Window], None] | None = None,
        live: Callable[[str], None] | None = None,
        interval: float = 2.0,
    ) -> None:
        self.on_window = on_window
        self.live = live
        self.interval = interval


def run_workers(
    name: str,
    fn: WorkerFn,
    args: list[Any],
    record_bytes: int,
    progress: Progress,
    *,
    timeout: float,
    expected: int | None = None,
    server_cpu: Callable[[], float] | None = None,
) -> RunResult:
    """Run ``fn`` in one process per entry of ``args``; one result for all of them.

    ``server_cpu``: reads the server's CPU seconds (INFO cpu); read before the start signal
    and after the last worker is done, the difference is the run's server cost.
    """
    n = len(args)
    ints = [_ctx.RawArray("q", 1) for _ in range(n)]
    doubles = [_ctx.RawArray("d", 3) for _ in range(n)]
    go = _ctx.Event()
    out: Any = _ctx.Queue()
    procs = [
        _ctx.Process(
            target=_worker_main,
            args=(fn, i, ints, doubles[i], go, out, args[i]),
            name=f"bench-{name}-{i}",
            daemon=True,
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    results: dict[int, WorkerOutput] = {}
    try:
        _await_ready(out, procs, n)
        cpu0 = server_cpu() if server_cpu is not None else 0.0
        go.set()
        start = time.monotonic()
        windows = _report(
            name,
            out,
            procs,
            ints,
            doubles,
            results,
            start,
            record_bytes,
            progress,
            timeout,
            expected,
        )
        server_cpu_s = server_cpu() - cpu0 if server_cpu is not None else None
    finally:
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                os.kill(p.pid or 0, 9)
                p.join(1.0)
    records = sum(r.records for r in results.values())
    span = max(r.ended for r in results.values()) - min(r.started for r in results.values())
    lat = array("d")
    extra: dict[str, Any] = {}
    for i in sorted(results):
        lat.extend(results[i].latencies)
        for k, v in (results[i].extra or {}).items():
            extra.setdefault(k, []).append(v)
    return RunResult(
        name, records, span, record_bytes, Latency.of(lat), windows, extra=extra,
        server_cpu_s=server_cpu_s, client_cpu_s=sum(r.cpu_s for r in results.values()),
    )  # fmt: skip


def _get(out: Any, procs: list[Any], wait: float) -> tuple[str, int, Any] | None:
    try:
        msg: tuple[str, int, Any] = out.get(timeout=wait)
    except queue.Empty:
        dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
        if dead:
            raise PartstreamError(
                f"bench worker {dead[0].name} died (exit {dead[0].exitcode})"
            ) from None
        return None
    if msg[0] == "error":
        raise PartstreamError(f"bench worker {msg[1]} failed: {msg[2]}")
    return msg


def _await_ready(out: Any, procs: list[Any], n: int) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    ready = 0
    while ready < n:
        if time.monotonic() > deadline:
            raise PartstreamError(f"bench workers not ready within {SETUP_TIMEOUT_S:.0f}s")
        msg = _get(out, procs, 0.5)
        if msg is not None and msg[0] == "ready":
            ready += 1


def _report(
    name: str,
    out: Any,
    procs: list[Any],
    ints: list[Any],
    doubles: list[Any],
    results: dict[int, WorkerOutput],
    start: float,
    record_bytes: int,
    progress: Progress,
    timeout: float,
    expected: int | None,
) -> list[Window]:
    windows: list[Window] = []
    last_t, last_n, last_sum, last_cnt = start, 0, 0.0, 0.0
    tick = 0.25 if progress.live else progress.interval
    next_window = start + progress.interval
    while len(results) < len(procs):
        now = time.monotonic()
        if now - start > timeout:
            raise PartstreamError(f"bench run {name} did not finish within {timeout:.0f}s")
        msg = _get(out, procs, min(tick, max(0.01, next_window - now)))
        if msg is not None and msg[0] == "done":
            results[msg[1]] = msg[2]
            continue
        now = time.monotonic()
        done = sum(int(a[0]) for a in ints)
        if progress.live:
            of = f"/{expected}" if expected else ""
            rate = done / (now - start) if now > start else 0.0
            progress.live(f"{name}: {done}{of} records, {rate:,.0f} records/s")
        if now >= next_window:
            lsum = sum(d[0] for d in doubles)
            lcnt = sum(d[1] for d in doubles)
            lmax = max(d[2] for d in doubles)
            for d in doubles:
                d[2] = 0.0
            dt = now - last_t
            rate = (done - last_n) / dt if dt > 0 else 0.0
            w = Window(
                t=now - start,
                records=done - last_n,
                rate=rate,
                mb_per_s=rate * record_bytes / 1_000_000,
                lat_avg=(lsum - last_sum) / (lcnt - last_cnt) if lcnt > last_cnt else 0.0,
                lat_max=lmax,
            )
            windows.append(w)
            if progress.on_window:
                progress.on_window(name, w)
            last_t, last_n, last_sum, last_cnt = now, done, lsum, lcnt
            next_window = now + progress.interval
    return windows
