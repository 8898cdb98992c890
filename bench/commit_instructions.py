"""Instructions the server spends on ``FCALL commit``, and on its parts, under callgrind:
``python -m bench.commit_instructions [--batches 16] [--records 55] [--variant FILE.lua ...]``.

CPU time on a machine shared with other work moves by tens of percent from one minute to the
next; the instructions a server executes for the same requests do not. This starts its own
``redis-server`` (the first on PATH, or ``--server``) under ``valgrind --tool=callgrind``
on ``--port``, writes rounds as the producer writes them to one server (``MULTI``, each
batch's native XADDs, one ``FCALL``, ``EXEC``), zeroes the counters before the measured
rounds, dumps them after, and prints the instructions per round and, over the ``noop``
function's round, per batch. The functions compared (each a function body as
``partitions._base.functions`` builds them, after ``common.lua``):

* ``noop``: ``return 1`` with the commit's keys and arguments (the base of a round; since session 7
  of issue 18 2 keys and 3 arguments a batch, the producer id once: commit.lua's convention);
* ``hget-hset``: the sequence read and record only;
* ``hget-xrevrange-hset``: the same with the read of the stream's last entry;
* ``commit``: this version's ``commit.lua``; ``--variant FILE`` adds other commit bodies
  (e.g. an older ``commit.lua`` from ``git show REV:partitions/_producer/commit.lua``).

``--cap N`` (repeatable; 0 = the whole round in one MULTI) measures ``commit`` only, with
each round split into MULTIs of at most N records (whole batches), beside ``native``: the
same records as plain pipelined XADDs, 1,000 a write (what redis-benchmark sends).
``--cache`` adds callgrind's cache simulation with a last level of ``--ll`` bytes (default
512 KiB, the L2 of this machine's cores) and prints, beside the instructions, an estimate of
the cycles: Ir + 10 x first-level misses + 40 x last-level misses (a rough weight, the same
for every row): a transaction's queued arguments that no longer fit a cache cost misses,
which instruction counts alone do not show.

Development tooling, not part of the package; the server is stopped by its pid.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from partitions._base.functions import source

ROUNDS = 100
PARTS = {
    "noop": "return 1",
    "hget-hset": """local out = {}
for b = 0, #KEYS / 2 - 1 do
  redis.call('HGET', KEYS[2 * b + 2], ARGV[1])
  redis.call('HSET', KEYS[2 * b + 2], ARGV[1], ARGV[3 * b + 2] .. ' a b 1')
  out[b + 1] = 1
end
return out""",
    "hget-xrevrange-hset": """local out = {}
for b = 0, #KEYS / 2 - 1 do
  redis.call('HGET', KEYS[2 * b + 2], ARGV[1])
  local top = redis.call('XREVRANGE', KEYS[2 * b + 1], '+', '-', 'COUNT', 1)[1]
  redis.call('HSET', KEYS[2 * b + 2], ARGV[1], ARGV[3 * b + 2] .. ' a ' .. top[1] .. ' 1')
  out[b + 1] = 1
end
return out""",
}


def library(bodies: dict[str, str]) -> bytes:
    parts = [b"#!lua name=ps_commit_instructions\n", source("common")]
    for i, body in enumerate(bodies.values()):
        parts.append(
            b"local function f%d(KEYS, ARGV)\n%b\nend\n"
            b"redis.register_function{function_name = 'ps_ci_%d', callback = f%d}\n"
            % (i, body.encode(), i, i)
        )
    return b"".join(parts)


def rounds(
    r: redis.Redis, fn: str, batches: int, records: int, first: int, count: int, cap: int = 0
) -> None:
    """``count`` rounds of ``batches`` batches of ``records``, each round in MULTIs of at
    most ``cap`` records (whole batches; 0: one MULTI), or plain XADDs (``fn`` "native")."""
    keys: list[str] = []
    for b in range(batches):
        keys += [f"ci:{{s{b}}}", f"ci:{{s{b}}}:seq"]  # no groups key: no safe retention
    per = batches if cap <= 0 else max(1, cap // records)  # batches a MULTI
    for i in range(first, first + count):
        pipe = r.pipeline(transaction=False)
        if fn == "native":
            for b in range(batches):
                for _ in range(records):
                    pipe.execute_command("XADD", keys[2 * b], "*", "key", "k", "value", "v" * 100)
            if not all(isinstance(o, bytes) for o in pipe.execute()):
                raise RuntimeError("a native XADD failed")
            continue
        for lo in range(0, batches, per):
            group = range(lo, min(batches, lo + per))
            pipe.execute_command("MULTI")
            for b in group:
                for _ in range(records):
                    pipe.execute_command("XADD", keys[2 * b], "*", "key", "k", "value", "v" * 100)
            # commit.lua's arguments: the producer id once, then sequence, count, retention
            args: list[object] = ["pid"]
            for _ in group:
                args += [i + 1, records, "0 0 0"]
            pipe.execute_command(
                "FCALL", fn, 2 * len(group), *[k for b in group for k in keys[2 * b : 2 * b + 2]],
                *args,
            )  # fmt: skip
            pipe.execute_command("EXEC")
        out = pipe.execute()
        if any(isinstance(o[-1], Exception) for o in out if isinstance(o, list)):
            raise RuntimeError(f"a round of {fn} failed: {str(out[-1])[:300]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.commit_instructions")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--port", type=int, default=46399)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--records", type=int, default=55, help="records per batch")
    ap.add_argument("--variant", type=Path, action="append", default=[])
    ap.add_argument(
        "--cap",
        type=int,
        action="append",
        default=[],
        help="commit with MULTIs of at most N records (0: the round), repeatable",
    )
    ap.add_argument("--cache", action="store_true", help="simulate the caches (slow)")
    ap.add_argument("--ll", type=int, default=512 * 1024, help="last-level cache bytes")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument(
        "--requests-only",
        action="store_true",
        help="count only the reading and running of requests and the writing of replies "
        "(readQueryFromClient, writeToClient): not the server's timers, whose share moves "
        "with the wall time a run takes under valgrind",
    )
    args = ap.parse_args(argv)
    if not args.server or not shutil.which("valgrind"):
        raise SystemExit("needs redis-server and valgrind")
    bodies = dict(PARTS)
    bodies["commit"] = source("commit").decode()
    for path in args.variant:
        bodies[path.name] = path.read_text()
    runs: list[tuple[str, str, int]] = [(n, f"ps_ci_{i}", 0) for i, n in enumerate(bodies)]
    if args.cap:
        commit_fn = f"ps_ci_{list(bodies).index('commit')}"
        runs = [("native", "native", 0)]
        runs += [(f"commit, MULTI <= {c or 'round'}", commit_fn, c) for c in args.cap]
    out_dir = Path(tempfile.mkdtemp(prefix="ps-ci-"))
    cache = ["--cache-sim=yes", f"--LL={args.ll},8,64"] if args.cache else []
    if args.requests_only:
        cache += ["--toggle-collect=readQueryFromClient", "--toggle-collect=writeToClient"]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", *cache, f"--callgrind-out-file={out_dir}/cg.%p",
         args.server, "--port", str(args.port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        r = redis.Redis(port=args.port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.2)
        r.execute_command("FUNCTION", "LOAD", "REPLACE", library(bodies))
        version = r.info("server")["redis_version"]
        totals: dict[str, float] = {}
        cycles: dict[str, float] = {}
        n = args.rounds
        for name, fn, cap in runs:
            r.flushall()
            rounds(r, fn, args.batches, args.records, 0, 5, cap)  # warm-up
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            rounds(r, fn, args.batches, args.records, 5, n, cap)
            dump = subprocess.run(["callgrind_control", "-d", f"run{len(totals)}", str(proc.pid)],
                                  capture_output=True, text=True)  # fmt: skip
            if dump.returncode != 0:
                raise RuntimeError(dump.stderr)
            for _ in range(600):  # the dump is written after callgrind_control returns
                dumps = list(out_dir.glob(f"cg.{proc.pid}.*"))
                if len(dumps) > len(totals):
                    break
                time.sleep(0.1)
            latest = max(dumps, key=lambda p: p.stat().st_mtime)
            text = latest.read_text()
            got = re.search(r"(?:summary|totals): ([\d ]+)", text)
            assert got is not None
            ev = [int(x) for x in got.group(1).split()]
            totals[name] = ev[0] / n
            if args.cache:  # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
                cycles[name] = (ev[0] + 10 * sum(ev[3:6]) + 40 * sum(ev[6:9])) / n
        if args.cap:
            per = args.batches * args.records
            print(
                f"redis {version}: rounds of {args.batches} batches of {args.records} records"
                + (f"; caches simulated, last level {args.ll} bytes" if args.cache else "")
            )
            for name, total in totals.items():
                line = f"{name:24s} {total / per:9,.0f} instructions a record"
                line += f" ({total / totals['native']:.3f}x native)"
                if args.cache:
                    line += f"  ~{cycles[name] / per:9,.0f} cycles a record"
                    line += f" ({cycles[name] / cycles['native']:.3f}x native)"
                print(line)
            return 0
        base = totals["noop"]
        per_record = base / (args.batches * args.records)
        print(f"redis {version}: rounds of {args.batches} batches of {args.records} records; "
              f"the noop round is {per_record:,.0f} instructions a record")  # fmt: skip
        for name, total in totals.items():
            print(f"{name:22s} {total:12,.0f} instructions a round  "
                  f"{(total - base) / args.batches:9,.0f} a batch over noop")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
