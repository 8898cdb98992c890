"""The asyncio producer's CPU at a fixed rate, and an asyncio exchange through the pool
against one on a held connection (bench/README.md, issue 18, session 12).

    python -m bench.async_producer_cpu [--url redis://127.0.0.1:6379] [--rate 50000]
                                       [--records 150000] [--exchanges 5000]

``rate``: an :class:`~partitions.AsyncProducer` (``linger_ms=0``, 100-byte values, 1,000
keys, 16 partitions) sends ``records`` at ``rate`` records/s (paced each millisecond), then
``flush()``; prints the process CPU per record. ``exchange``: ``exchanges`` PINGs through
``aexchange`` (the pool's get and release each time) and on one held connection
(``aexchange_on``), three passes; prints CPU and wall per exchange. Run the old code with
``PYTHONPATH=<old worktree>`` in front for an A/B in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.aio import connect_async
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import connect
from partitions._client.wire import AsyncLink, aexchange, aexchange_on
from partitions._producer.aio import AsyncProducer

PING = [b"*1\r\n$4\r\nPING\r\n"]


async def at_rate(cc: ClientConfig, rate: float, records: int) -> tuple[float, float]:
    """(process CPU us per record, records/s achieved)."""
    async with (
        await connect_async(cc) as conn,
        AsyncProducer(conn, ProducerConfig(linger_ms=0)) as p,
    ):
        await p.send_and_wait("t", b"w", key=b"w")
        value = b"x" * 100
        t0, c0 = time.monotonic(), time.process_time()
        per, i = max(1, int(rate / 1000)), 0
        while i < records:
            for _ in range(min(per, records - i)):
                await p.send("t", value, key=b"k%d" % (i % 1000))
                i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        await p.flush()
        return (time.process_time() - c0) / records * 1e6, records / (time.monotonic() - t0)


async def exchanges(cc: ClientConfig, n: int) -> None:
    async with await connect_async(cc) as conn:
        pool = conn.client.connection_pool
        link = AsyncLink(pool=pool)
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                await aexchange(link, PING, 1)
            through = ((time.process_time() - c) / n * 1e6, (time.perf_counter() - t) / n * 1e6)
            held = await pool.get_connection()
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                await aexchange_on(held, PING, 1)
            kept = ((time.process_time() - c) / n * 1e6, (time.perf_counter() - t) / n * 1e6)
            await pool.release(held)
            print(f"through the pool: cpu {through[0]:.1f} / wall {through[1]:.1f} us; "
                  f"held: cpu {kept[0]:.1f} / wall {kept[1]:.1f} us an exchange")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="redis://127.0.0.1:6379")
    ap.add_argument("--rate", type=float, default=50_000)
    ap.add_argument("--records", type=int, default=150_000)
    ap.add_argument("--exchanges", type=int, default=5_000)
    a = ap.parse_args()
    ns = "apcpu-" + uuid.uuid4().hex[:8]
    cc = ClientConfig(url=a.url, namespace=ns, socket_timeout=60.0)
    conn = connect(cc)
    try:
        TopicAdmin(conn).create(TopicSpec("t", partitions=16))
        cpu, got = asyncio.run(at_rate(cc, a.rate, a.records))
        print(f"AsyncProducer at {got:,.0f} records/s: {cpu:.2f} us of process CPU a record")
        asyncio.run(exchanges(cc, a.exchanges))
    finally:
        conn.client.delete(*conn.client.keys(f"{ns}*") or ["none"])
        conn.close()


if __name__ == "__main__":
    main()
