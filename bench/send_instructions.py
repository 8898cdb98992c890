"""The producer's instructions a record, for callgrind: N records through the producer.

    valgrind --tool=callgrind python -m bench.send_instructions URL MODE N

Run it for two N (8,000 and 24,000) and divide the difference of the totals by the
difference of N: start-up and set-up (the same for every N) drop out. MODE ``caller``:
``send()`` per record (the bench worker's loop, in a function) into a producer whose
senders never run; ``sender``: the same, then the senders' rounds run in this thread
(drain, pack, exchange with the server at URL, settle, complete) and one future in 100
read; ``sender-noread``: without the reads. Run old code with ``PYTHONPATH=<worktree>``.
Development tooling, not part of the package.
"""

from __future__ import annotations

import sys
import uuid

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import connect
from partitions._producer import producer as producer_mod
from partitions._producer import sender as sender_mod
from partitions.bench.options import BenchOptions, iter_chunks

url, mode, records = sys.argv[1], sys.argv[2], int(sys.argv[3])


class _Idle:
    def __init__(self, *a: object) -> None:
        pass

    def join(self, t: float | None) -> None:
        pass


ns = "cg-" + uuid.uuid4().hex[:8]
conn = connect(ClientConfig(url=url, namespace=ns, socket_timeout=60.0))
TopicAdmin(conn).create(TopicSpec("t", partitions=16))
opts = BenchOptions(records=24000)
chunks = list(iter_chunks(opts, 24000, 0))[: records // 100]  # the same setup for every N
config = ProducerConfig(batch_size=1000, linger_ms=5, buffer_records=24000 + 10000)
real = producer_mod.Sender
producer_mod.Sender = _Idle
p = producer_mod.Producer(conn, config)
producer_mod.Sender = real


# a warm-up round so the library is loaded and MULTI permitted (as in a steady run)
def run_rounds(p):
    acc, cond = p._acc, p._cond
    target = conn.client.connection_pool
    acc.flushing += 1
    while True:
        with cond:
            batches, _expired, _wake = acc.drain()
        if not batches:
            break
        driver = sender_mod.Driver(
            sender_mod.send_round(acc, cond, batches, lambda k: target, 60.0, lambda e: False)
        )
        while (step := driver.next()) is not None:
            try:
                if isinstance(step, sender_mod.Exchange):
                    driver.reply(sender_mod.exchange(step.target, step.payload, step.expect))
                else:
                    conn.functions.load()
                    driver.reply(None)
            except Exception as err:
                driver.reply(error=err)
        sender_mod.complete(driver.result)
    acc.flushing -= 1


for _ in range(3):
    for i in range(16 * 8):
        p.send("t", b"w" * 100, key=b"warm%d" % i)
    run_rounds(p)


def loop(send, chunks):  # a function, as the bench worker's loop (fast locals)
    futures = []
    for chunk in chunks:
        k0, v0 = chunk[0]
        futures.append(send("t", v0, key=k0))
        for k, v in chunk[1:]:
            send("t", v, key=k)
    return futures


futures = loop(p.send, chunks)
if mode in ("sender", "sender-noread", "full"):
    run_rounds(p)
    if mode != "sender-noread":
        for f in futures:
            f.result(0)
assert mode == "caller" or all(f.done() for f in futures)
conn.client.delete(*conn.client.keys(f"{ns}*") or ["none"])
