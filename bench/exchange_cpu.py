"""A producer round's exchange alone, CPU and wall time: through the pool each round
(``wire.exchange``) against the connection a busy sender keeps (``Sender._exchange_held``).
``python -m bench.exchange_cpu [PORT]`` (a redis-server of your own on 127.0.0.1:PORT; one
PING a round, 5,000 rounds, three passes). Development tooling, not part of the package."""

import sys
import time

import redis

from partitions._client.wire import exchange, pack
from partitions._producer.sender import Exchange, Sender

r = redis.Redis(port=int(sys.argv[1]) if len(sys.argv) > 1 else 6379)
pool = r.connection_pool
payload, n = [pack(["PING"])], 5000
for _pass in range(3):
    for name in ("pool each round", "held"):
        held: dict[object, object] = {}
        t, w = time.thread_time(), time.perf_counter()
        for _ in range(n):
            if name == "held":
                Sender._exchange_held(held, Exchange(pool, payload, 1))
            else:
                exchange(pool, payload, 1)
        Sender._release(held)
        cpu = (time.thread_time() - t) / n * 1e6
        wall = (time.perf_counter() - w) / n * 1e6
        print(f"{name:>16}: {cpu:6.1f} us CPU, {wall:6.1f} us wall a PING round")
