"""The consume bench's sides in turn on one server, with what the server did for each:
``python -m bench.consume_sides --url URL [--records 100000] [--callgrind PID] ps raw ps raw``.

The records are produced once (``partitions.bench.consume.prepare``); each side then reads
all of them with a group of its own (``ps``: partstream's Consumer, ``raw``: the redis-py
loop), and this prints, per record: the server's system and user CPU (INFO cpu), the bytes
its AOF grew by (``aof_current_size``; 0 without an AOF), its read and write events, and each
command's calls (INFO commandstats, reset before each side). With ``--callgrind PID`` (a
server run under ``valgrind --tool=callgrind``) the counters are zeroed before each side and
dumped after it (``callgrind_control -z`` / ``--dump=<n><side>``): compare the dumps'
``summary`` lines. Run it from a worktree of another commit to compare code.

Development tooling, not part of the package.
"""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

import redis

from partitions.bench import consume
from partitions.bench.env import BenchServer, new_namespace
from partitions.bench.options import BenchOptions
from partitions.bench.workers import Progress

SIDES = {"ps": consume.run_partstream, "raw": consume.run_redis_py}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.consume_sides")
    ap.add_argument("--url", required=True)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--callgrind", metavar="PID", help="the server's pid under callgrind")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a side may take")
    ap.add_argument("sides", nargs="+", choices=sorted(SIDES))
    args = ap.parse_args()
    consume._timeout = lambda opts: args.timeout  # valgrind's server is ~50x slower
    server = BenchServer(args.url, embedded=False)
    opts = BenchOptions(records=args.records, repeat=1)
    ns = new_namespace()
    consume.prepare(server, ns, opts)
    client = redis.Redis.from_url(args.url)
    n = args.records
    for i, side in enumerate(args.sides):
        client.config_resetstat()
        before = client.info("all")
        if args.callgrind:
            subprocess.run(["callgrind_control", "-z", args.callgrind], capture_output=True)
        SIDES[side](server, ns, opts, Progress(), f"g{i}{side}")
        if args.callgrind:
            dump = f"--dump={i}{side}"
            subprocess.run(["callgrind_control", dump, args.callgrind], capture_output=True)
        after = client.info("all")

        def per(key: str, a: dict[str, Any] = after, b: dict[str, Any] = before) -> float:
            return (float(a.get(key, 0)) - float(b.get(key, 0))) / n

        print(f"{side}: sys {per('used_cpu_sys') * 1e6:.3f} user {per('used_cpu_user') * 1e6:.3f}"
              f" us/record, AOF {per('aof_current_size'):.1f} B/record, reads"
              f" {per('total_reads_processed'):.5f} writes {per('total_writes_processed'):.5f}"
              " a record")  # fmt: skip
        calls = {k[8:]: v["calls"] for k, v in after.items() if k.startswith("cmdstat_")}
        print("  calls:", ", ".join(f"{k} {v}" for k, v in sorted(calls.items()) if v > 10))


if __name__ == "__main__":
    main()
