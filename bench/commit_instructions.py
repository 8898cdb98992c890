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

* ``noop``: ``return 1`` with the commit's keys and arguments (the base of a round);
* ``hget-hset``: the sequence read and record only;
* ``hget-xrevrange-hset``: the same with the read of the stream's last entry;
* ``commit``: this version's ``commit.lua``; ``--variant FILE`` adds other commit bodies
  (e.g. an older ``commit.lua`` from ``git show REV:partitions/_producer/commit.lua``).

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
for b = 0, #KEYS / 3 - 1 do
  redis.call('HGET', KEYS[3 * b + 2], ARGV[6 * b + 1])
  redis.call('HSET', KEYS[3 * b + 2], ARGV[6 * b + 1], ARGV[6 * b + 2] .. ' a b 1')
  out[b + 1] = 1
end
return out""",
    "hget-xrevrange-hset": """local out = {}
for b = 0, #KEYS / 3 - 1 do
  redis.call('HGET', KEYS[3 * b + 2], ARGV[6 * b + 1])
  local top = redis.call('XREVRANGE', KEYS[3 * b + 1], '+', '-', 'COUNT', 1)[1]
  redis.call('HSET', KEYS[3 * b + 2], ARGV[6 * b + 1], ARGV[6 * b + 2] .. ' a ' .. top[1] .. ' 1')
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


def rounds(r: redis.Redis, fn: str, batches: int, records: int, first: int, count: int) -> None:
    keys: list[str] = []
    for b in range(batches):
        keys += [f"ci:{{s{b}}}", f"ci:{{s{b}}}:seq", f"ci:{{s{b}}}:groups"]
    pipe = r.pipeline(transaction=False)
    for i in range(first, first + count):
        pipe.execute_command("MULTI")
        for b in range(batches):
            for _ in range(records):
                pipe.execute_command("XADD", keys[3 * b], "*", "key", "k", "value", "v" * 100)
        args: list[object] = []
        for _ in range(batches):
            args += ["pid", i + 1, 0, 0, 0, records]
        pipe.execute_command("FCALL", fn, 3 * batches, *keys, *args)
        pipe.execute_command("EXEC")
    out = pipe.execute()
    if not all(isinstance(o, list) for o in out[2 + batches * records :: 3 + batches * records]):
        raise RuntimeError(f"a round of {fn} failed: {out[-1]!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.commit_instructions")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--port", type=int, default=46399)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--records", type=int, default=55, help="records per batch")
    ap.add_argument("--variant", type=Path, action="append", default=[])
    args = ap.parse_args(argv)
    if not args.server or not shutil.which("valgrind"):
        raise SystemExit("needs redis-server and valgrind")
    bodies = dict(PARTS)
    bodies["commit"] = source("commit").decode()
    for path in args.variant:
        bodies[path.name] = path.read_text()
    out_dir = Path(tempfile.mkdtemp(prefix="ps-ci-"))
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", args.server,
         "--port", str(args.port), "--save", "", "--appendonly", "no"],
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
        for i, name in enumerate(bodies):
            r.flushall()
            rounds(r, f"ps_ci_{i}", args.batches, args.records, 0, 5)  # warm-up
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            rounds(r, f"ps_ci_{i}", args.batches, args.records, 5, ROUNDS)
            dump = subprocess.run(["callgrind_control", "-d", name, str(proc.pid)],
                                  capture_output=True, text=True)  # fmt: skip
            if dump.returncode != 0:
                raise RuntimeError(dump.stderr)
            latest = max(out_dir.glob(f"cg.{proc.pid}.*"), key=lambda p: p.stat().st_mtime)
            got = re.search(r"(?:summary|totals): (\d+)", latest.read_text())
            assert got is not None
            totals[name] = int(got.group(1)) / ROUNDS
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
