"""The threaded producer with and without its round split and its step aside for the GIL,
in one process, on one private server, sides alternating (bench/README.md, issue 18,
session 11).

    python -m bench.producer_gil_ab [--server valkey|redis] [--rounds 6] [--records 200000]
                                    [MODE ...]

A MODE is ``base`` (both off), or ``+``-joined settings: ``split=N`` (``SPLIT_RECORDS``),
``give=S`` (``GIVE_S``, seconds), ``every=S`` (``GIVE_EVERY_S``), ``switch=S``
(``sys.setswitchinterval``, which the library does not change: an experiment only). Not given:
``base split=2000 split=2000+give=0.0001``. Each side: a fresh topic of 16 partitions,
``send()`` per record (100-byte value, 10,000 keys; batch 1,000, linger 5 ms, buffer 200,000)
then ``flush()``; prints each mode's records/s per round and their median, the server's and
the process's CPU µs per record. The server (the embedded Valkey's binary, or
``/usr/bin/redis-server``) runs with AOF everysec, as the embedded one does, on a free port,
and is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import partitions._producer.accumulator as accumulator
import partitions._producer.producer as producer
from partitions import Producer, TopicAdmin, connect
from partitions._admin.topics import TopicSpec
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.server import valkey_binary

DEFAULTS = (accumulator.SPLIT_RECORDS, producer.GIVE_S, producer.GIVE_EVERY_S)
OFF = 10**12


def apply(mode: str) -> None:
    accumulator.SPLIT_RECORDS, producer.GIVE_S, producer.GIVE_EVERY_S = OFF, 0.0, OFF
    sys.setswitchinterval(0.005)
    for part in mode.split("+"):
        if part == "base":
            continue
        key, value = part.split("=")
        if key == "split":
            accumulator.SPLIT_RECORDS = int(value)
        elif key == "give":
            producer.GIVE_S = float(value)
            producer.GIVE_EVERY_S = min(producer.GIVE_EVERY_S, DEFAULTS[2])
        elif key == "every":
            producer.GIVE_EVERY_S = float(value)
        elif key == "switch":
            sys.setswitchinterval(float(value))
        else:
            raise SystemExit(f"unknown setting {key!r} in mode {mode!r}")


def server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=("valkey", "redis"), default="valkey")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("modes", nargs="*", default=["base", "split=2000", "split=2000+give=0.0001"])
    args = ap.parse_args()
    for mode in args.modes:
        apply(mode)  # a typo fails before any server starts
    binary = str(valkey_binary()) if args.server == "valkey" else "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="ps-gil-ab-", dir="/tmp"))
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in args.modes}
    keys = [b"key-%d" % i for i in range(10_000)]
    value = b"x" * 100
    try:
        for _ in range(100):  # until the server listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        conn = connect(ClientConfig(url=f"redis://127.0.0.1:{port}"))
        for r in range(args.rounds):
            for i, mode in enumerate(args.modes if r % 2 == 0 else args.modes[::-1]):
                apply(mode)
                topic = f"ab-{r}-{i}"
                TopicAdmin(conn).create(TopicSpec(topic, 16))
                config = ProducerConfig(batch_size=1000, linger_ms=5, buffer_records=200_000)
                with Producer(conn, config) as p:
                    p.send(topic, b"warm-up", key=b"warm-up").result(10)
                    s0, c0, t0 = server_cpu(conn.client), time.process_time(), time.perf_counter()
                    send = p.send
                    for n in range(args.records):
                        send(topic, value, key=keys[n % 10_000])
                    p.flush()
                    t1, c1, s1 = time.perf_counter(), time.process_time(), server_cpu(conn.client)
                per = 1e6 / args.records
                rows[mode].append((args.records / (t1 - t0), (s1 - s0) * per, (c1 - c0) * per))
                conn.client.delete(*conn.client.keys("*"))
        conn.close()
    finally:
        server.kill()
        server.wait()
    for mode, got in rows.items():
        rates = " ".join(f"{r[0] / 1000:.0f}k" for r in got)
        print(
            f"{mode:28s} median {statistics.median(r[0] for r in got) / 1000:.0f}k records/s "
            f"({rates}), server {statistics.median(r[1] for r in got):.2f} / "
            f"process {statistics.median(r[2] for r in got):.2f} us/record"
        )


if __name__ == "__main__":
    main()
