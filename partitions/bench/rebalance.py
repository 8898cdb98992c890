"""``partstream bench rebalance``: how long a group takes to reconcile, and who pauses.

Real processes: one fixed-rate producer (``rate``) and consumers of one group (short
session: :data:`SESSION_MS`). After a steady phase, three events, each followed by a steady
phase of ``duration`` seconds:

* **join**: a new consumer process starts;
* **leave**: that consumer closes gracefully (SIGTERM);
* **kill**: an original consumer is ``kill -9``-ed (its partitions move after the session).

Reconcile time is from the event to the coordinator describing the group ``stable`` with the
expected members and every partition owned. Each consumer logs the end-to-end latency (from
the intended send time) of every record it handed out; for each event the partitions whose
owner did not change ("unmoved") are checked: their highest latency (and 99th percentile)
while the group reconciled, against those of every partition in the steady phase before,
from :data:`SETTLE_S` after the previous event reconciled (the moved partitions' catch-up
is not steady state) to the event. Nothing of this is shared between processes but files,
so a kill -9 loses at most 100 ms of a log, and nothing else.

Each round (``repeat``) runs the three events on a topic and group of its own.
"""

from __future__ import annotations

import os
import signal
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.settings import GroupSettings
from partitions._client.config import ConsumerConfig, ProducerConfig
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.bench.env import BenchServer
from partitions.bench.options import BenchOptions, make_keys, make_values
from partitions.bench.stats import Latency, ratio
from partitions.bench.workers import _ctx

SESSION_MS = 3000
SETTINGS = GroupSettings(session_timeout_ms=SESSION_MS, heartbeat_interval_ms=300)
_STAMP = struct.Struct("<d")
_LOG = struct.Struct("<dId")  # hand-out (monotonic s), partition, latency ms
# Seconds after an event reconciled that the next steady window starts (the moved
# partitions catch up meanwhile: not steady state); at most half a phase.
SETTLE_S = 1.0


def _producer(server: BenchServer, ns: str, topic: str, opts: BenchOptions, stop: Any) -> None:
    conn = server.connect(ns)
    keys = make_keys(opts.keys)
    pad = make_values(opts.record_size - _STAMP.size, 1)[0]
    cfg = ProducerConfig(batch_size=opts.batch_size, linger_ms=opts.linger("rebalance"))
    with Producer(conn, cfg) as producer:
        step, started, i = 1.0 / opts.rate, time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - started) / step) + 1
            for j in range(i, due):
                intended = _STAMP.pack(started + j * step)
                producer.send(topic, intended + pad, key=keys[j % len(keys)])
            i = max(i, due)
            time.sleep(max(0.0, started + i * step - time.monotonic()))


def _consumer(server: BenchServer, ns: str, name: str, opts: BenchOptions, log_path: str) -> None:
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    conn = server.connect(ns)
    cfg = ConsumerConfig(
        fetch_count=opts.batch_size, max_poll_records=opts.batch_size, block_ms=100
    )
    consumer = Consumer(name, name, conn=conn, config=cfg, group_settings=SETTINGS)
    buf = bytearray()
    flushed = time.monotonic()
    with open(log_path, "ab", buffering=0) as log:
        while not stopping[0]:
            batch = consumer.poll(opts.batch_size, timeout=0.1)
            now = time.monotonic()
            for r in batch:
                if r.value is not None and len(r.value) >= _STAMP.size:
                    ms = (now - _STAMP.unpack_from(r.value)[0]) * 1000.0
                    buf += _LOG.pack(now, r.partition, ms)
            if now - flushed > 0.1 and buf:
                log.write(bytes(buf))
                buf.clear()
                flushed = now
        log.write(bytes(buf))
    consumer.close()
    conn.close()


def _read_logs(paths: list[Path]) -> list[tuple[float, int, float]]:
    rows: list[tuple[float, int, float]] = []
    for path in paths:
        data = path.read_bytes() if path.exists() else b""
        usable = len(data) - len(data) % _LOG.size
        rows += [_LOG.unpack_from(data, off) for off in range(0, usable, _LOG.size)]
    return rows


def _wait_reconciled(
    admin: GroupAdmin, group: str, members: int, partitions: int, limit: float
) -> Any:
    """Poll until stable with ``members`` members owning all partitions: (seconds, desc)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            d = admin.describe(group)
        except Exception:  # the group is created by the first consumer
            d = None
        if (
            d is not None
            and d.state == "stable"
            and len(d.members) == members
            and sum(len(m.owned) for m in d.members) == partitions
        ):
            return time.monotonic() - t0, d
        time.sleep(0.005)
    raise TimeoutError(f"group {group} did not reconcile to {members} members in {limit:.0f}s")


def run_rebalance(
    server: BenchServer, ns: str, opts: BenchOptions, say: Any, round_no: int = 0
) -> dict[str, Any]:
    """Run the three events (round ``round_no``: its own topic and group, both named
    ``rebal<round>``); returns {"events": [...], "settings": {...}}."""
    name = f"rebal{round_no}"
    tmp = Path(tempfile.mkdtemp(prefix="ps-rebal-"))
    with server.connect(ns) as conn:
        TopicAdmin(conn).create(TopicSpec(name, opts.partitions))
    admin_conn = server.connect(ns)
    admin = GroupAdmin(admin_conn)
    stop = _ctx.Event()
    procs: dict[str, Any] = {}
    limit = SESSION_MS / 1000 * 3 + 30

    def start_consumer(member: str) -> None:
        log_path = str(tmp / member)
        p = _ctx.Process(target=_consumer, args=(server, ns, name, opts, log_path), daemon=True)
        p.start()
        procs[member] = p

    producer = _ctx.Process(target=_producer, args=(server, ns, name, opts, stop), daemon=True)
    events: list[dict[str, Any]] = []
    try:
        start_consumer("a")
        start_consumer("b")
        _, desc = _wait_reconciled(admin, name, 2, opts.partitions, limit)
        producer.start()
        settle = min(SETTLE_S, opts.duration / 2)
        settled = time.monotonic() + settle  # the first records: the consumers warm up
        time.sleep(opts.duration)
        plan: list[tuple[str, int, Callable[[], None]]] = [
            ("join", 3, lambda: start_consumer("c")),
            ("leave", 2, lambda: os.kill(procs["c"].pid, signal.SIGTERM)),
            ("kill -9", 1, lambda: os.kill(procs["b"].pid, signal.SIGKILL)),
        ]
        for event, members, act in plan:
            before = desc.owners()
            say(f"-- rebalance: {event} ({members} member(s) after)")
            t_event = time.monotonic()
            act()
            took, desc = _wait_reconciled(admin, name, members, opts.partitions, limit)
            after = desc.owners()
            unmoved = {tp.partition for tp, m in before.items() if after.get(tp) == m}
            events.append(
                {
                    "event": event,
                    "t": t_event,
                    "steady_from": settled,
                    "reconcile_ms": took * 1000.0,
                    "unmoved": sorted(unmoved),
                    "moved": sorted({tp.partition for tp in before} - unmoved),
                }
            )
            settled = t_event + took + settle
            time.sleep(opts.duration)
        stop.set()
        producer.join(10)
    finally:
        stop.set()
        for p in [*procs.values(), producer]:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)
            p.join(10)
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGKILL)
        admin_conn.close()
    rows = _read_logs(sorted(tmp.iterdir()))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return {
        "events": [_judge(e, rows, opts.duration) for e in events],
        "settings": SETTINGS.to_dict(),
    }


def _judge(
    event: dict[str, Any], rows: list[tuple[float, int, float]], phase: float
) -> dict[str, Any]:
    """Latency of unmoved / moved partitions while reconciling vs the steady phase before."""
    t0 = event["t"]
    t1 = t0 + event["reconcile_ms"] / 1000.0 + 0.5
    unmoved, moved = set(event["unmoved"]), set(event["moved"])
    steady = Latency.of(ms for t, _, ms in rows if event["steady_from"] <= t < t0)
    during_rows = [(ms, t) for t, p, ms in rows if t0 <= t < t1 and p in unmoved]
    during = Latency.of(ms for ms, _ in during_rows)
    # When the unmoved partitions' slowest record was handed out, from the event: beside
    # reconcile_ms it tells a pause at the takeover from one anywhere in the window.
    worst_at = max(during_rows)[1] - t0 if during_rows else 0.0
    t_moved = t1 + phase / 2
    moved_max = max((ms for t, p, ms in rows if t0 <= t < t_moved and p in moved), default=0.0)
    return {
        "event": event["event"],
        "reconcile_ms": round(event["reconcile_ms"], 1),
        "moved_partitions": len(moved),
        "unmoved_partitions": len(unmoved),
        "steady_seconds": round(max(0.0, t0 - event["steady_from"]), 2),
        "steady_records": steady.samples,
        "steady_max_ms": round(steady.max, 2),
        "steady_p99_ms": round(steady.p99, 2),
        "unmoved_records": during.samples,
        "unmoved_max_ms": round(during.max, 2),
        "unmoved_max_at_ms": round(worst_at * 1000.0, 1),
        "unmoved_p99_ms": round(during.p99, 2),
        "moved_max_ms": round(moved_max, 2),
        "unmoved_pause_ms": round(max(0.0, during.max - steady.max), 2),
        "unmoved_vs_steady": round(ratio(during.max, steady.max), 3),
        "unmoved_vs_steady_p99": round(ratio(during.p99, steady.p99), 3),
    }
