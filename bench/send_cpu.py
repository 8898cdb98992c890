"""The producer's own CPU per record, split between the caller's thread and the senders.

    python -m bench.send_cpu [--url redis://127.0.0.1:PORT] [--records 300000] [--trials 3]
                             [--mode server|noserver] [--many] [--profile FILE]

``server``: the bench's produce worker's loop (``send()`` per record, 100-byte values, 10,000
keys, 16 partitions, batch 1,000, linger 5 ms, buffer 200,000) then ``flush()``; prints the
caller thread's CPU (``time.thread_time``), the whole process's (``time.process_time``: the
senders too) and the wall time, per record. ``noserver``: the same ``send()`` calls into a
producer whose senders never run (the buffer holds every record), so only the caller's path
is timed. ``--many``: ``send_many`` of 100 records a call instead. ``--asyncio``: the same
with :class:`~partitions.AsyncProducer` (``await send()`` per record, on one event loop; in
``noserver`` its sender task never starts). Run the old code with
``PYTHONPATH=<old worktree>`` in front for an A/B in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import time
import uuid

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.aio import connect_async
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import connect
from partitions._producer import aio
from partitions._producer import producer as producer_mod
from partitions.bench.options import BenchOptions, iter_chunks


class _Idle:
    """A sender that never sends (``noserver``)."""

    def __init__(self, *args: object) -> None:
        pass

    def join(self, timeout: float | None) -> None:
        pass


Times = tuple[float, float, float]  # caller thread, process, wall: us per record


def trial(url: str, records: int, mode: str, many: bool, prof: cProfile.Profile | None) -> Times:
    ns = "sendcpu-" + uuid.uuid4().hex[:8]
    conn = connect(ClientConfig(url=url, namespace=ns, socket_timeout=60.0))
    TopicAdmin(conn).create(TopicSpec("t", partitions=16))
    opts = BenchOptions(records=records)
    chunks = list(iter_chunks(opts, records, 0))
    config = ProducerConfig(batch_size=1000, linger_ms=5, buffer_records=max(200_000, records + 10))
    real = producer_mod.Sender
    if mode in ("noserver", "loop"):
        producer_mod.Sender = _Idle  # type: ignore[assignment,misc]
    try:
        p = producer_mod.Producer(conn, config)
    finally:
        producer_mod.Sender = real  # type: ignore[misc]
    send, send_many = p.send, p.send_many
    if mode == "loop":  # the loop's own cost: a send() that does nothing

        def send(topic: str, value: bytes, key: bytes) -> None:  # type: ignore[misc]
            return None

    if mode == "server":
        send("t", b"warm-up", key=b"warm-up").result(30)
    futures = []
    t0, c0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
    if prof is not None:
        prof.enable()
    if many:
        for chunk in chunks:
            futures.append(send_many("t", [(v, k) for k, v in chunk])[0])
    else:
        for chunk in chunks:
            k0, v0 = chunk[0]
            futures.append(send("t", v0, key=k0))
            for k, v in chunk[1:]:
                send("t", v, key=k)
    if mode == "server":
        p.flush()
    if prof is not None:
        prof.disable()
    t1, c1, w1 = time.thread_time(), time.process_time(), time.perf_counter()
    if mode == "server":
        assert all(f.result(0).id for f in futures)
        p.close()
    conn.client.delete(*conn.client.keys(f"{ns}*") or ["none"])
    conn.close()
    us = 1e6 / records
    return (t1 - t0) * us, (c1 - c0) * us, (w1 - w0) * us


def async_trial(url: str, records: int, mode: str, prof: cProfile.Profile | None) -> Times:
    """:func:`trial` with the AsyncProducer (``mode``: server or noserver)."""
    ns = "sendcpu-" + uuid.uuid4().hex[:8]
    cc = ClientConfig(url=url, namespace=ns, socket_timeout=60.0)
    conn = connect(cc)
    TopicAdmin(conn).create(TopicSpec("t", partitions=16))
    chunks = list(iter_chunks(BenchOptions(records=records), records, 0))
    config = ProducerConfig(batch_size=1000, linger_ms=5, buffer_records=max(200_000, records + 10))

    async def run() -> Times:
        async with await connect_async(cc) as aconn:
            p = aio.AsyncProducer(aconn, config)
            if mode == "noserver":
                p._start = lambda: None  # type: ignore[method-assign]
            else:
                await p.send_and_wait("t", b"warm-up", key=b"warm-up")
            send = p.send
            t0, c0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            for chunk in chunks:
                for k, v in chunk:
                    await send("t", v, key=k)
            if mode == "server":
                await p.flush()
            if prof is not None:
                prof.disable()
            t1, c1, w1 = time.thread_time(), time.process_time(), time.perf_counter()
            if mode == "server":
                await p.close()
        us = 1e6 / records
        return (t1 - t0) * us, (c1 - c0) * us, (w1 - w0) * us

    try:
        return asyncio.run(run())
    finally:
        conn.client.delete(*conn.client.keys(f"{ns}*") or ["none"])
        conn.close()


def _profile_senders(path: str) -> None:
    """Run every sender thread under one shared cProfile (dumped at exit)."""
    import atexit

    from partitions._producer import sender

    profiles: list[cProfile.Profile] = []
    run = sender.Sender._run

    def profiled(self: sender.Sender) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.runcall(run, self)

    sender.Sender._run = profiled  # type: ignore[method-assign]

    def dump() -> None:
        import pstats

        stats = pstats.Stats(*profiles) if profiles else None
        if stats is not None:
            stats.dump_stats(path)

    atexit.register(dump)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="redis://127.0.0.1:6379")
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--mode", choices=["server", "noserver", "loop"], default="server")
    ap.add_argument("--many", action="store_true")
    ap.add_argument("--asyncio", action="store_true", help="the AsyncProducer (server, noserver)")
    ap.add_argument("--profile")
    ap.add_argument("--profile-senders", help="cProfile the sender threads into FILE")
    a = ap.parse_args()
    if a.profile_senders:
        _profile_senders(a.profile_senders)
    prof = cProfile.Profile() if a.profile else None
    if a.asyncio and (a.many or a.mode == "loop"):
        ap.error("--asyncio runs send() per record, in server or noserver mode")
    if a.asyncio:
        rows = [async_trial(a.url, a.records, a.mode, prof) for _ in range(a.trials)]
    else:
        rows = [trial(a.url, a.records, a.mode, a.many, prof) for _ in range(a.trials)]
    for r in rows:
        print(f"caller {r[0]:.2f}  process {r[1]:.2f}  wall {r[2]:.2f} us/record")
    med = [statistics.median(c) for c in zip(*rows, strict=True)]
    print(
        f"median: caller {med[0]:.2f}  process {med[1]:.2f}  wall {med[2]:.2f} us/record "
        f"({1e6 / med[2]:,.0f} records/s)"
    )
    if prof is not None:
        prof.dump_stats(a.profile)


if __name__ == "__main__":
    main()
