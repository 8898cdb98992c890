"""Render the README's figures table from saved results: ``python -m bench.report FILES``.

Each file is the JSON that ``partstream bench MODE ... --out FILE`` wrote; nothing in the
table is typed by hand. With ``--write README``, the table replaces the text between the
``<!-- figures -->`` and ``<!-- /figures -->`` markers of that file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- figures -->", "<!-- /figures -->"


def _server(env: dict[str, Any]) -> str:
    srv = env["server"]
    where = "embedded" if srv.get("embedded") else "url"
    return f"{srv['flavor']} {srv['version']} ({where})"


def _run(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    runs = [r for r in data["runs"] if r["name"] == name]
    if not runs:
        return None
    # The median round by rate, like the ratio (for one round, that round).
    runs.sort(key=lambda r: r["records_per_s"])
    return runs[len(runs) // 2]


def _rate(run: dict[str, Any] | None) -> str:
    """records/s, and the server's and the client's CPU µs per record where measured."""
    if run is None:
        return "-"
    cost = [f"{who} {us:.2f}" for who in ("server", "client")
            if (us := run.get(f"{who}_us_per_record"))]  # fmt: skip
    return f"{run['records_per_s']:,.0f}/s" + (f" ({' / '.join(cost)} µs/rec)" if cost else "")


def _cost(run: dict[str, Any] | None) -> str:
    """The server's CPU µs per record, where the run measured it."""
    us = run.get("server_us_per_record") if run else None
    return f" (server {us:.2f} µs/rec)" if us else ""


def _lat(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    lat = run["latency_ms"]
    return f"p50 {lat['p50']:.2f} / p99 {lat['p99']:.2f} / p99.9 {lat['p999']:.2f} ms"


def _targets(data: dict[str, Any]) -> str:
    return "<br>".join(
        f"{t['value']:.2f}x {'>=' if t['higher_is_better'] else '<='} {t['goal']:g}x: "
        f"{'met' if t['met'] else '**missed**'}"
        for t in data["targets"]
    )


# Optional peers (``--peers``): shown after the baselines when the run has them.
PEERS = ("nats-jetstream", "faststream-redis")


def _peers(data: dict[str, Any]) -> str:
    return "".join(
        f", {name} {_rate(run)}" for name in PEERS if (run := _run(data, name)) is not None
    )


def row(data: dict[str, Any]) -> str:
    mode, env = data["mode"], data["env"]
    if mode == "produce":
        ps, base = _run(data, "partstream"), _run(data, "redis-py")
        rb = _run(data, "redis-benchmark")
        figures = f"partstream {_rate(ps)}, redis-py {_rate(base)}"
        for side in ("partstream-asyncio", "partstream-send-many", "resp-pipeline"):
            if (run := _run(data, side)) is not None:
                figures += f", {side} {_rate(run)}"
        figures += f", redis-benchmark {_rate(rb)}" + _peers(data)
        if (all_acks := _run(data, "partstream-acks-all")) is not None:  # --acks all
            figures += (
                f"; partstream acks=all {_rate(all_acks)} ({_lat(all_acks)}) vs acks=1 "
                f"({_lat(ps)}), on a primary with {data['env']['server'].get('replicas', 1)} "
                "replica"
            )
        for c in data.get("extra", {}).get("cluster", []):  # --cluster N[,M...]
            shares = "/".join(f"{100 * n['share']:.0f}" for n in c["per_node"])
            figures += (
                f"; cluster of {c['masters']} {c['records_per_s']:,.0f}/s (per primary {shares} %)"
            )
    elif mode == "consume":
        ps, base = _run(data, "partstream"), _run(data, "redis-py")
        figures = f"partstream {_rate(ps)}, redis-py {_rate(base)}" + _peers(data)
    elif mode == "e2e":
        ps, base = _run(data, "partstream"), _run(data, "raw")
        figures = f"partstream {_lat(ps)}{_cost(ps)}; raw {_lat(base)}{_cost(base)}"
    else:
        figures = "<br>".join(
            f"{e['event']}: reconciled {e['reconcile_ms']:.0f} ms, unmoved max "
            f"{e['unmoved_max_ms']:.1f} ms"
            + (f" at {e['unmoved_max_at_ms']:.0f} ms" if "unmoved_max_at_ms" in e else "")
            + f" (steady {e['steady_max_ms']:.1f} ms)"
            + (
                f", p99 {e['unmoved_p99_ms']:.1f} ms (steady {e['steady_p99_ms']:.1f} ms)"
                if "unmoved_p99_ms" in e
                else ""
            )
            + f", moved max {e['moved_max_ms']:.0f} ms"
            for e in data["extra"]["events"]
        )
    rounds = data["config"].get("repeat", 1)
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in data["ratios"].items())
    return (
        f"| {mode} | {_server(env)} | {figures} | {ratios} | {_targets(data)} | "
        f"{rounds} | `{data['command']}` | {env.get('git_commit') or '?'} | "
        f"{env['time_utc']}, load {env['load_avg_1m']} |"
    )


def _semver(text: str) -> str:
    """``2.9.10`` out of what a results file says (older ones: ``<nats server v2.9.10>``)."""
    m = re.search(r"\d+\.\d+\.\d+", text)
    return m.group(0) if m else text


def _peer_line(peers: dict[str, Any], pk: dict[str, Any]) -> str:
    parts = []
    if "nats-jetstream" in peers:
        n = peers["nats-jetstream"]
        parts.append(
            f"NATS server {_semver(n['server_version'])} (JetStream, {n['storage']} storage) "
            f"via nats-py "
            f"{pk.get('nats-py')}, async publish with at most {n['max_inflight_acks']:,} acks "
            "in flight, durable pull consumer: fetch + ack per message"
        )
    if "faststream-redis" in peers:
        parts.append(
            f"FastStream {pk.get('faststream')} on the same server as partstream: "
            "publish(stream=..., pipeline=...) executed every batch, batch StreamSub per partition"
        )
    return "Peers (`--peers`): " + "; ".join(parts) + "."


def table(files: list[Path]) -> str:
    order = {"produce": 0, "consume": 1, "e2e": 2, "rebalance": 3}
    # Only the load modes: bench coordinator (no server, no baseline) is quoted on its own.
    datas = [d for f in files if (d := json.loads(f.read_text())).get("mode") in order]
    datas.sort(key=lambda d: (order.get(d["mode"], 9), _server(d["env"])))
    head = (
        "| mode | server | figures (median round) | ratios (median of rounds) | targets | "
        "rounds | command | commit | when |\n|---|---|---|---|---|---|---|---|---|"
    )
    commits = sorted({str(d["env"].get("git_commit") or "?") for d in datas})
    if len(commits) == 1:
        lines = [f"Every row below comes from commit {commits[0]}.\n", head]
    else:
        lines = [f"The rows below come from {len(commits)} commits: {', '.join(commits)}.\n", head]
    lines += [row(d) for d in datas]
    if datas:
        env = datas[0]["env"]
        pk = env["packages"]
        lines.append(
            f"\nMachine: {env['cpu_count']} CPUs, {env['platform']}, Python {env['python']}, "
            f"redis-py {pk.get('redis')}, hiredis {pk.get('hiredis')}, "
            f"{env.get('redis_benchmark') or 'no redis-benchmark'}."
        )
        peers = next((d["extra"]["peers"] for d in datas if d["extra"].get("peers")), None)
        if peers:
            lines.append(_peer_line(peers, pk))
    return "\n".join(lines) + "\n"


PATHS_BEGIN, PATHS_END = "<!-- append-paths -->", "<!-- /append-paths -->"
PATH_NAMES = {
    "redis-benchmark": "`redis-benchmark -P 1000 -c 1` pipelined XADD (the native cost)",
    "native": "hand-packed XADD pipeline, 1,000 a write (no guarantees)",
    "lua": "one `FCALL append` per batch, `redis.call('XADD')` per record (until issue 18)",
    "lua-lean": "the same Lua loop trimmed (short ids, no per-record formatting, reply of two ids)",
    "multi-bare": "MULTI + native XADDs + EXEC, nothing else (the floor; not safe alone)",
    "multi-commit-each": "MULTI + native XADDs + `FCALL commit` + EXEC per batch (on a cluster)",
    "multi-commit": "one MULTI per round: every batch's XADDs + one `FCALL commit` (single server)",
}


def paths_table(files: list[Path]) -> str:
    """The append-path alternatives (``python -m bench.append_paths --out``), one row each:
    the server's µs per record and its ratio to redis-benchmark in the same trial."""
    datas = [d for f in files if "batches" in (d := json.loads(f.read_text()))]
    if not datas:
        return ""
    datas.sort(key=lambda d: _server(d["env"]))
    heads = [f"{_server(d['env'])}, batch {b}" for d in datas for b in d["batches"]]
    lines = [
        "| alternative | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    names = [n for n in PATH_NAMES if any(n in t for d in datas for t in d["batches"].values())]
    for name in names:
        cells = []
        for d in datas:
            for table in d["batches"].values():
                row = table.get(name)
                cells.append(
                    "-"
                    if row is None
                    else f"{row['median_us']:.2f} µs ({row.get('vs_redis_benchmark', 0):.2f}x)"
                )
        lines.append(f"| {PATH_NAMES[name]} | " + " | ".join(cells) + " |")
    cmds = "; ".join(f"`{d['command']}` ({d['env']['time_utc']}, load {d['env']['load_avg_1m']})"
                     for d in datas)  # fmt: skip
    trials = "/".join(sorted({str(d["trials"]) for d in datas}))
    lines.append(
        f"\nEach cell: the median over {trials} trials of the server's µs per record and, in "
        f"brackets, of its ratio to redis-benchmark's in the same trial; {datas[0]['records']:,} "
        f"records of 100 B over {datas[0]['partitions']} partitions. Commands: {cmds}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--write", type=Path, help="Replace the figures block of this file.")
    args = ap.parse_args(argv)
    text = table(args.files)
    if args.write is None:
        sys.stdout.write(text)
        return 0
    doc = args.write.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    doc = doc[:start] + "\n" + text + doc[end:]
    if PATHS_BEGIN in doc and (paths := paths_table(args.files)):
        start, end = doc.index(PATHS_BEGIN) + len(PATHS_BEGIN), doc.index(PATHS_END)
        doc = doc[:start] + "\n" + paths + doc[end:]
    args.write.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
