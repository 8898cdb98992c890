"""Server cost of the producer's append path, alternatives side by side:
``python -m bench.append_paths --url URL [--records N] [--batch B ...] [--trials T]``.

Each alternative writes the same records (``--records`` keyed records of 100 bytes over 16
partitions, the bench's) in rounds of one batch of ``--batch`` records per partition, as
the producer sends them, on one connection; the server's CPU per record is read from
INFO cpu before and after. The trials run every alternative in a rotated order and each
alternative's figure is the median over trials of its ratio to redis-benchmark's pipelined
XADD in the same trial (a machine shared with other work moves absolute figures by tens of
percent from one minute to the next; the paired ratio holds much better).

Alternatives (``--only`` picks some):

* ``redis-benchmark``: ``XADD`` from the C tool, ``-P 1000 -c 1``, the native cost;
* ``native``: hand-packed ``XADD`` pipelines of 1,000 commands (no guarantees at all);
* ``lua``: one ``FCALL append`` per batch, a ``redis.call('XADD')`` per record
  (``append.lua``, the path until issue 18, still used for single-record batches);
* ``lua-lean``: the same loop trimmed (short ids, no per-record string formatting, reply of
  the first and last id only), an experiment: how far Lua micro-optimisation goes;
* ``multi-bare``: ``MULTI``, native XADDs, ``EXEC``: the floor of any MULTI path (no
  sequence check, no record: not safe on its own);
* ``multi-commit-each``: ``MULTI``, a batch's native XADDs, ``FCALL commit`` (``commit.lua``:
  sequence check, record, retention, or undo), ``EXEC``, per batch: what the producer sends
  on a cluster (a MULTI holds one slot);
* ``multi-commit``: what the producer sends to a single server: one ``MULTI`` per round with
  every batch's native XADDs and one ``FCALL commit`` for them all;
* ``multi-commit-capN`` (``--cap N``, repeatable): the round's batches grouped, in order,
  into ``MULTI`` s of at most ``N`` records each (whole batches; a larger batch alone), one
  ``FCALL commit`` per ``MULTI``.

Writes ``--out FILE.json`` (with the environment, like ``partstream bench``); the README's
"alternatives tried" table quotes these files. Development tooling, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect
from partitions._client.wire import exchange_on, pack
from partitions._producer.batch import (
    RECORD_SLOTS,
    Batch,
    Route,
    encode_record,
    multi_groups,
    multi_replies,
    packed_multi,
)
from partitions.bench.env import BenchServer, bench_server, environment, server_cpu_s
from partitions.bench.options import BenchOptions, iter_chunks
from partitions.bench.stats import median
from partitions.testing import drop_namespace

PARTITIONS = 16
TOPIC = "paths"

# append.lua's loop with less work per record: one '..' per id, no string.format, the
# "0, key, value" form only, and a reply of the first and the last id (the client knows
# the ones in between). Same checks before the first write, same sequence record.
LEAN = r"""#!lua name=ps_append_paths
redis.register_function('ps_paths_lean', function(KEYS, ARGV)
  local stream, seqkey, pid = KEYS[1], KEYS[2], ARGV[1]
  local seq, n = tonumber(ARGV[2]), tonumber(ARGV[6])
  local prev = redis.call('HGET', seqkey, pid)
  local pseq = prev and tonumber(string.match(prev, '^(%d+)')) or 0
  if seq ~= pseq + 1 then return {2} end
  local call = redis.call
  local first = call('XADD', stream, '*', 'key', ARGV[8], 'value', ARGV[9])
  local ms, s0 = string.match(first, '^(%d+)-(%d+)$')
  local pre, s, last = ms .. '-', tonumber(s0), first
  for i = 10, 4 + 3 * n, 3 do
    s = s + 1
    last = pre .. s
    call('XADD', stream, last, 'key', ARGV[i + 1], 'value', ARGV[i + 2])
  end
  call('HSET', seqkey, pid, seq .. ' ' .. first .. ' ' .. last .. ' ' .. ms)
  return {1, first, last}
end)
"""

ALTERNATIVES = (
    "redis-benchmark", "native", "lua", "lua-lean", "multi-bare", "multi-commit-each",
    "multi-commit",
)  # fmt: skip


class Paths:
    """The records, encoded once per alternative, and one connection to write them on."""

    def __init__(self, conn: Connection, records: int, batch: int) -> None:
        self.conn = conn
        self.records = records
        self.batch = batch
        opts = BenchOptions(records=records, partitions=PARTITIONS)
        self.recs = [(k, v) for chunk in iter_chunks(opts, records, 0) for k, v in chunk]
        self.link = conn.client.connection_pool.get_connection()

    def topic(self) -> Route:
        admin = TopicAdmin(self.conn)
        admin.create(TopicSpec(TOPIC, PARTITIONS), exist_ok=True)
        return Route(admin.get(TOPIC), self.conn.keys)

    def rounds(self, route: Route, seqs: list[int]) -> list[list[Batch]]:
        """Rounds of at most one batch per partition, sequence numbers from ``seqs``."""
        per: list[list[tuple[bytes, bytes]]] = [[] for _ in range(PARTITIONS)]
        for k, v in self.recs:
            per[route.for_key(k)].append((k, v))
        out: list[list[Batch]] = []
        at = 0
        while any(at < len(p) for p in per):
            rnd = []
            for p in range(PARTITIONS):
                if at >= len(per[p]):
                    continue
                batch = Batch(TOPIC, p, route, 0.0, 0.0)
                for k, v in per[p][at : at + self.batch]:
                    _, chunk, _ = encode_record(route, v, k, None, p, None, 1 << 20)
                    batch.chunks.extend(chunk)
                    batch.count += 1
                seqs[p] += 1
                batch.pid, batch.seq = b"paths", seqs[p]
                rnd.append(batch)
            out.append(rnd)
            at += self.batch
        return out

    def write(self, payloads: list[tuple[bytes, int]]) -> None:
        for data, expect in payloads:
            replies = exchange_on(self.link, [data], expect)
            bad = [r for r in replies if isinstance(r, Exception)]
            if bad:
                raise RuntimeError(f"append path failed: {bad[0]}")


def payloads(paths: Paths, name: str) -> list[tuple[bytes, int]]:
    """What alternative ``name`` writes, encoded before the clock starts (server cost only)."""
    if name == "native":
        layout = paths.topic().meta.layout
        streams = [paths.conn.keys.stream(layout, p).encode() for p in range(PARTITIONS)]
        out = []
        for i in range(0, len(paths.recs), 1000):
            part = paths.recs[i : i + 1000]
            cmds = [
                pack(
                    [
                        b"XADD",
                        streams[xxh3_64_intdigest(k) % PARTITIONS],
                        b"*",
                        b"key",
                        k,
                        b"value",
                        v,
                    ]
                )
                for k, v in part
            ]
            out.append((b"".join(cmds), len(cmds)))
        return out
    route = paths.topic()
    out = []
    for rnd in paths.rounds(route, [0] * PARTITIONS):
        if name == "lua":
            out.append((b"".join(b.packed(False) for b in rnd), len(rnd)))
        elif name == "multi-commit":
            out.append((packed_multi(rnd), multi_replies(rnd)))
        elif name == "multi-commit-each":
            out.append((b"".join(packed_multi([b]) for b in rnd), sum(b.count + 3 for b in rnd)))
        elif name == "multi-bare":
            body = b"".join(_bare(b) for b in rnd)
            out.append((body, sum(b.count + 2 for b in rnd)))
        elif name == "lua-lean":
            out.append((b"".join(_lean(b) for b in rnd), len(rnd)))
        elif name.startswith("multi-commit-cap"):
            groups = multi_groups(rnd, int(name.removeprefix("multi-commit-cap")))
            out.append((b"".join(packed_multi(g) for g in groups),
                        sum(multi_replies(g) for g in groups)))  # fmt: skip
        else:
            raise ValueError(name)
    return out


def _bare(batch: Batch) -> bytes:
    return pack(["MULTI"]) + batch.xadds() + pack(["EXEC"])


def _lean(batch: Batch) -> bytes:
    r, p = batch.route, batch.partition
    args: list[Any] = [b"FCALL", b"ps_paths_lean", 3, r.stream_keys[p], r.seq_keys[p],
                       r.groups_keys[p], batch.pid, batch.seq, 0, 0, 0, batch.count]  # fmt: skip
    pieces = batch.chunks  # RECORD_SLOTS a record: "", key head, k, value head, v, CRLF
    for at in range(0, len(pieces), RECORD_SLOTS):
        args += [0, pieces[at + 2], pieces[at + 4]]
    return pack(args)


def redis_benchmark(server: BenchServer, ns: str, records: int) -> Callable[[], None]:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise SystemExit("redis-benchmark not found")
    value = "x" * 100
    cmd = [exe, *server.redis_benchmark_args(), "-n", str(records), "-P", "1000", "-c", "1",
           "-r", str(PARTITIONS), "-q", "XADD", f"{ns}:rb:__rand_int__", "*", "key",
           "k__rand_int__", "value", value]  # fmt: skip

    def run() -> None:
        subprocess.run(cmd, capture_output=True, check=True, timeout=600)

    return run


def trial(paths: Paths, server: BenchServer, ns: str, names: list[str]) -> dict[str, float]:
    """One run of each alternative: server µs per record."""
    got: dict[str, float] = {}
    for name in names:
        if name == "redis-benchmark":
            run = redis_benchmark(server, ns, paths.records)
        else:
            data = payloads(paths, name)

            def run(data: list[tuple[bytes, int]] = data) -> None:
                paths.write(data)

        before = server_cpu_s(paths.conn)
        run()
        got[name] = (server_cpu_s(paths.conn) - before) * 1e6 / paths.records
        drop_namespace(paths.conn)
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.append_paths")
    ap.add_argument("--url", default=None, help="server (default: a private embedded Valkey)")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--batch", type=int, action="append", help="records per batch (repeatable)")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--only", action="append", choices=ALTERNATIVES)
    ap.add_argument(
        "--cap",
        type=int,
        action="append",
        default=[],
        help="also multi-commit-capN: MULTIs of at most N records (repeatable)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    batches = args.batch or [62]
    names = list(args.only or ALTERNATIVES) + [f"multi-commit-cap{c}" for c in args.cap]
    command = "python -m bench.append_paths " + " ".join(argv or sys.argv[1:])
    result: dict[str, Any] = {"command": command}
    with bench_server(args.url) as server:
        ns = "paths" + str(int(time.time()))
        conn = connect(ClientConfig(url=server.url, namespace=ns, socket_timeout=120))
        try:
            conn.functions.load()
            conn.client.execute_command("FUNCTION", "LOAD", "REPLACE", LEAN)
            result["env"] = environment(conn, server)
            result["records"], result["partitions"], result["trials"] = (
                args.records, PARTITIONS, args.trials)  # fmt: skip
            result["batches"] = {}
            for batch in batches:
                paths = Paths(conn, args.records, batch)
                trial(paths, server, ns, ["native"])  # warm-up: the server's memory
                per: dict[str, list[float]] = {n: [] for n in names}
                for t in range(args.trials):
                    order = names[t % len(names) :] + names[: t % len(names)]
                    for name, us in trial(paths, server, ns, order).items():
                        per[name].append(us)
                rb = per.get("redis-benchmark")
                table = {}
                for name, values in per.items():
                    row: dict[str, Any] = {"us_per_record": [round(v, 4) for v in values],
                                           "median_us": round(median(values), 4)}  # fmt: skip
                    line = f"batch {batch:5d}  {name:15s} median {row['median_us']:.3f} us/record"
                    if rb:
                        paired = [v / b for v, b in zip(values, rb, strict=True)]
                        row["vs_redis_benchmark"] = round(median(paired), 3)
                        line += f"  {row['vs_redis_benchmark']:.2f}x redis-benchmark"
                    table[name] = row
                    print(line)
                result["batches"][str(batch)] = table
        finally:
            conn.client.execute_command("FUNCTION", "DELETE", "ps_append_paths")
            drop_namespace(conn)
            conn.close()
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(json.dumps(result["batches"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
