"""The entry point of ``partstream bench``: run one mode, compare, check targets, save.

:func:`run_bench` is what the CLI calls. It picks the server (``url`` or a private embedded
Valkey), runs the mode's sides in an order rotated from round to round (``repeat`` rounds),
computes the ratios against the baselines measured in the same run, checks the issue's targets, and
writes the results file (``out``) and plot (``plot``) when asked.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from partitions._base.errors import ConfigError
from partitions.bench.env import (
    BenchServer,
    bench_server,
    drop_namespace,
    environment,
    new_namespace,
)
from partitions.bench.options import BenchOptions
from partitions.bench.output import BenchResult, phase_header
from partitions.bench.stats import RunResult, Target, median, ratio
from partitions.bench.workers import Progress

# The targets.
ASYNC_GOAL = 0.8  # the asyncio consumer against the threaded one, same run
PRODUCE_GOAL = 2.0  # partstream / redis-py records/s
CONSUME_GOAL = 1.2  # partstream / the raw redis-py loop, records/s
# partstream / the raw loop, the server's CPU microseconds per record consumed, at most.
CONSUME_SERVER_GOAL = 1.05
E2E_P99_GOAL = 1.3  # partstream p99 / raw p99, at most
# A side kept the e2e rate if its producers delivered at least this share of it (below, its
# latencies measure a growing backlog, and a ratio of two backlogs says nothing).
E2E_KEPT = 0.95
# Unmoved partitions while a group reconciles: highest latency / the steady phase's highest.
REBALANCE_GOAL = 1.5

# One side of a round (partstream, a baseline or a peer): run round r, return its measurement.
Side = Callable[[int], RunResult]
# acks="all" / acks=1 records/s of partstream's producer, on a primary with one replica.
ACKS_ALL_GOAL = 0.7
# partstream / FastStream-Redis records/s, produce and consume (the issue: "ahead of" it).
PEER_GOAL = 1.0
FASTSTREAM_PEER = "faststream-redis"


class Bench:
    """One invocation's context: server, options, where progress goes."""

    def __init__(
        self,
        server: BenchServer,
        opts: BenchOptions,
        progress: Progress,
        say: Callable[[str], None],
    ) -> None:
        self.server = server
        self.opts = opts
        self.progress = progress
        self.say = say
        self.ns = new_namespace()

    def cleanup(self) -> None:
        with self.server.connect(self.ns) as conn:
            drop_namespace(conn)


# The NATS and FastStream peers are development tooling: they live in the source tree's
# bench/peers.py, not in the installed package, and load only for --peers.
PEERS_FILE = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


def load_peers() -> ModuleType:
    """bench/peers.py of the source checkout this package runs from; ConfigError without one."""
    if not PEERS_FILE.is_file():
        raise ConfigError(
            "--peers needs the peer benchmarks of a partstream source checkout "
            f"(bench/peers.py, not found at {PEERS_FILE}); they are not installed with the "
            "package: run partstream bench --peers from a clone (pip install -e '.[peers]')"
        )
    root = str(PEERS_FILE.parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("bench.peers")


def _produce(b: Bench, result: BenchResult) -> None:
    from partitions.bench import cluster, produce

    o = b.opts
    shape = (
        f"{o.records} records of {o.record_size} B, {o.partitions} partitions, "
        f"{o.keys} keys, batch {o.batch_size}, {o.producers} producer process(es)"
    )

    def own(fn: Callable[..., RunResult]) -> Side:
        def run(_: int) -> RunResult:
            produce.create_topics(b.server, b.ns, o, produce.PS_TOPIC, produce.RAW_TOPIC)
            try:
                return fn(b.server, b.ns, o, b.progress)
            finally:
                produce.delete_topics(b.server, b.ns, produce.PS_TOPIC, produce.RAW_TOPIC)

        return run

    sides: list[tuple[str, Side]] = [
        ("partstream", own(produce.run_partstream)),
        ("redis-py", own(produce.run_redis_py)),
        ("partstream-asyncio", own(produce.run_partstream_async)),
        ("resp-pipeline", own(produce.run_resp)),
        ("partstream-send-many", own(produce.run_partstream_many)),
    ]
    if o.redis_benchmark and shutil.which("redis-benchmark") is not None:
        # A side of every round (order rotated like the others): its ratios are paired.
        sides.append(("redis-benchmark", _redis_benchmark_side(b)))
    elif o.redis_benchmark:
        result.notes.append("redis-benchmark not found: no machine-limit figure")
    if o.acks == "all":
        sides.append(("partstream-acks-all", own(produce.run_partstream_acks_all)))
    if o.peers:
        sides += load_peers().produce_sides(b, result)
    with contextlib.ExitStack() as stack:
        if o.cluster or o.cluster_url:
            sides += cluster.sides(b.ns, o, b.progress, stack, o.cluster_url)
        rounds = _rounds(b, result, sides, shape + f", linger {o.linger('produce')} ms")
    if o.cluster or o.cluster_url:
        cluster.report(result, rounds, o)
    if o.acks == "all":
        _acks_all_result(b, result, rounds["partstream-acks-all"])
    vs_sync = median([1.0 / x for x in rounds["partstream-asyncio"] if x > 0])
    result.ratios["partstream-asyncio/partstream"] = vs_sync
    result.targets.append(Target("produce partstream-asyncio/partstream", vs_sync, ASYNC_GOAL))
    _targets(result, "produce", rounds, PRODUCE_GOAL)
    if "redis-benchmark" in rounds:
        _against_redis_benchmark(result)


def _redis_benchmark_side(b: Bench) -> Side:
    from partitions.bench import produce

    def run(_: int) -> RunResult:
        try:
            rb = produce.run_redis_benchmark(b.server, b.ns, b.opts)
        finally:
            b.cleanup()
        assert rb is not None  # the side exists only where the tool does
        return rb

    return run


# The targets against redis-benchmark's pipelined XADD, same records, same run:
# the server's CPU per record (at most) and the client's records/s (at least).
SERVER_COST_GOAL = 1.15
CLIENT_RATE_GOAL = 0.75
# The sides compared with redis-benchmark (those present in the run).
VS_BENCHMARK = (
    "partstream", "partstream-asyncio", "partstream-send-many", "resp-pipeline", "redis-py",
)  # fmt: skip


def _against_redis_benchmark(result: BenchResult) -> None:
    """Per round, each side's server µs/record and records/s against redis-benchmark's of
    the same round; the medians are the ratios, partstream's are the targets."""
    by_round: dict[int, dict[str, RunResult]] = {}
    for run in result.runs:
        by_round.setdefault(run.extra.get("round", -1), {})[run.name] = run
    for name in VS_BENCHMARK:
        cost, rate = [], []
        for runs in by_round.values():
            ps, rb = runs.get(name), runs.get("redis-benchmark")
            if ps is None or rb is None:
                continue
            rate.append(ratio(ps.rate, rb.rate))
            if ps.server_us is not None and rb.server_us:
                cost.append(ps.server_us / rb.server_us)
        if rate and name != "partstream":  # partstream's: "partstream/redis-benchmark"
            result.ratios[f"records/s {name}/redis-benchmark"] = median(rate)
        if cost:
            result.ratios[f"server us/record {name}/redis-benchmark"] = median(cost)
    if "server us/record partstream/redis-benchmark" in result.ratios:
        result.targets.append(
            Target(
                "produce server us/record partstream/redis-benchmark",
                result.ratios["server us/record partstream/redis-benchmark"],
                SERVER_COST_GOAL,
                higher_is_better=False,
            )
        )
    result.targets.append(
        Target(
            "produce records/s partstream/redis-benchmark",
            result.ratios["partstream/redis-benchmark"],
            CLIENT_RATE_GOAL,
        )
    )


def _acks_all_result(b: Bench, result: BenchResult, per_round: list[float]) -> None:
    """acks="all" against acks=1 of the same rounds: the ratio, both latencies, the target."""
    vs_one = median([1.0 / x for x in per_round if x > 0])
    result.ratios["partstream-acks-all/partstream"] = vs_one
    with b.server.connect(b.ns) as conn:
        replicas = conn.server.replicas
    one, everyone = _median_run(result, "partstream"), _median_run(result, "partstream-acks-all")
    result.notes.append(
        f"acks='all' (WAIT for {replicas} connected replica(s) after each node's round) runs at "
        f"{vs_one:.2f}x the acks=1 rate (median of {len(per_round)} round(s)); latency "
        f"p50/p99/p99.9 of the median-rate run {everyone.latency.p50:.1f}/"
        f"{everyone.latency.p99:.1f}/{everyone.latency.p999:.1f} ms vs "
        f"{one.latency.p50:.1f}/{one.latency.p99:.1f}/{one.latency.p999:.1f} ms with acks=1 "
        "(send to acknowledgement, buffering included: the producer is fed as fast as it takes)"
    )
    if not replicas:
        result.notes.append("acks='all': the server has no replica: every WAIT timed out")
    result.targets.append(Target("produce acks=all / acks=1", vs_one, ACKS_ALL_GOAL))


def _median_run(result: BenchResult, name: str) -> RunResult:
    runs = sorted((r for r in result.runs if r.name == name), key=lambda r: r.rate)
    return runs[len(runs) // 2]


def _rounds(
    b: Bench,
    result: BenchResult,
    sides: list[tuple[str, Side]],
    shape: str,
) -> dict[str, list[float]]:
    """``repeat`` rounds of every side, the order rotated from round to round (round r starts
    ``r * len(sides) // repeat`` sides further on); partstream/other ratio per round.

    Until session 7 of issue 18 the order was reversed every other round, which kept each
    pair of sides equally far apart in every round: partstream, first in the list, was always
    five sides away from redis-benchmark, last, which its server cost is divided by, and ran
    first on the fresh server in rounds 0 and 2. Rotating puts every pair at different
    distances and every side at different places across the rounds."""
    rounds: dict[str, list[float]] = {name: [] for name, _ in sides[1:]}
    for r in range(b.opts.repeat):
        got: dict[str, RunResult] = {}
        for name, fn in rotated(sides, r, b.opts.repeat):
            b.say(phase_header(name, shape))
            got[name] = fn(r)
            got[name].extra["round"] = r
            result.runs.append(got[name])
        for name in rounds:
            rounds[name].append(ratio(got["partstream"].rate, got[name].rate))
    for name, values in rounds.items():
        result.ratios[f"partstream/{name}"] = median(values)
    if b.opts.repeat > 1:
        result.extra["round_ratios"] = [round(x, 3) for x in rounds["redis-py"]]
        for name, values in rounds.items():
            if name != "redis-py":
                result.extra[f"round_ratios {name}"] = [round(x, 3) for x in values]
    return rounds


def rotated(sides: list[Any], r: int, repeat: int) -> list[Any]:
    """The order of round ``r`` of ``repeat``: ``sides`` started ``r * n // repeat`` further on
    (n sides), so over the rounds each side runs at places spread over the whole order."""
    start = (r * len(sides) // max(repeat, 1)) % len(sides) if sides else 0
    return sides[start:] + sides[:start]


def _targets(result: BenchResult, mode: str, rounds: dict[str, list[float]], goal: float) -> None:
    result.targets.append(
        Target(f"{mode} partstream/redis-py", result.ratios["partstream/redis-py"], goal)
    )
    if FASTSTREAM_PEER in rounds:
        key = f"partstream/{FASTSTREAM_PEER}"
        result.targets.append(Target(f"{mode} {key}", result.ratios[key], PEER_GOAL))
        if "partstream-asyncio" in rounds:  # the asyncio classes against the asyncio peer
            per_round = [
                fs / aio
                for fs, aio in zip(
                    rounds[FASTSTREAM_PEER], rounds["partstream-asyncio"], strict=True
                )
                if aio > 0
            ]
            key = f"partstream-asyncio/{FASTSTREAM_PEER}"
            result.ratios[key] = median(per_round)
            result.targets.append(Target(f"{mode} {key}", result.ratios[key], PEER_GOAL))


def _consume(b: Bench, result: BenchResult) -> None:
    from partitions.bench import consume

    o = b.opts
    b.say(phase_header("setup", f"producing {o.records} records to {o.partitions} partitions"))
    consume.prepare(b.server, b.ns, o)
    shape = (
        f"{o.records} records of {o.record_size} B, {o.partitions} partitions, "
        f"read {o.batch_size} at a time, {o.consumers} consumer process(es)"
    )

    def own(name: str, fn: Callable[..., RunResult]) -> Side:
        def run(r: int) -> RunResult:
            return fn(b.server, b.ns, o, b.progress, f"{name.replace('-', '')}{r}")

        return run

    sides: list[tuple[str, Side]] = [
        ("partstream", own("partstream", consume.run_partstream)),
        ("redis-py", own("redis-py", consume.run_redis_py)),
        ("partstream-asyncio", own("partstream-asyncio", consume.run_asyncio)),
    ]
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    try:
        if o.peers:
            peer_sides, cleanup = load_peers().consume_sides(b, result)
            sides += peer_sides
        rounds = _rounds(b, result, sides, shape)
    finally:
        cleanup()
    result.notes.append("consume latency = duration of one poll / XREADGROUP+XACK call")
    _targets(result, "consume", rounds, CONSUME_GOAL)
    vs_sync = median([1 / x for x in rounds["partstream-asyncio"] if x > 0] or [0.0])
    result.ratios["partstream-asyncio/partstream"] = vs_sync
    result.targets.append(Target("consume asyncio / threaded consumer", vs_sync, ASYNC_GOAL))
    _cost_ratios(result, "consume", ["redis-py", "partstream-asyncio"], CONSUME_SERVER_GOAL)


def _cost_ratios(result: BenchResult, mode: str, others: list[str], goal: float) -> None:
    """Per round, partstream's server and client CPU per record over each other side's; the
    medians as ratios, and the server-cost target against the raw redis-py loop."""
    by_round: dict[int, dict[str, RunResult]] = {}
    for run in result.runs:
        by_round.setdefault(run.extra.get("round", 0), {})[run.name] = run
    for other in others:
        for what in ("server", "client"):
            values = [
                ratio(getattr(got["partstream"], f"{what}_us") or 0.0,
                      getattr(got[other], f"{what}_us") or 0.0)
                for got in by_round.values() if "partstream" in got and other in got
            ]  # fmt: skip
            values = [v for v in values if v > 0]
            if values:
                result.ratios[f"{what} us/record partstream/{other}"] = median(values)
    key = "server us/record partstream/redis-py"
    if key in result.ratios:
        result.targets.append(
            Target(f"{mode} server cost partstream/redis-py", result.ratios[key],
                   goal, higher_is_better=False)
        )  # fmt: skip


def _e2e(b: Bench, result: BenchResult) -> None:
    from partitions.bench import e2e
    from partitions.bench.produce import create_topics, delete_topics

    o = b.opts
    shape = (
        f"{o.rate:g} records/s for {o.duration:g} s, {o.record_size} B, {o.partitions} "
        f"partitions, {o.producers} producer(s) -> {o.consumers} consumer process(es), "
        f"linger {o.linger('e2e')} ms"
    )
    sides = [("partstream", "e2eps"), ("raw", "e2eraw")]
    rounds: dict[str, list[float]] = {"p50": [], "p99": [], "p999": []}
    server_cost: list[float] = []
    for r in range(o.repeat):
        got: dict[str, RunResult] = {}
        for name, topic in sides if r % 2 == 0 else sides[::-1]:
            b.say(phase_header(name, shape))
            create_topics(b.server, b.ns, o, topic)
            try:
                got[name] = e2e.run_side(name, b.server, b.ns, o, b.progress, topic)
            finally:
                delete_topics(b.server, b.ns, topic)
            got[name].extra["round"] = r
            result.runs.append(got[name])
        ps, raw = got["partstream"].latency, got["raw"].latency
        rounds["p50"].append(ratio(ps.p50, raw.p50))
        rounds["p99"].append(ratio(ps.p99, raw.p99))
        rounds["p999"].append(ratio(ps.p999, raw.p999))
        ps_us, raw_us = got["partstream"].server_us, got["raw"].server_us
        if ps_us is not None and raw_us:
            server_cost.append(ps_us / raw_us)
    for pct, values in rounds.items():
        result.ratios[f"{pct} latency partstream/raw"] = median(values)
    if server_cost:
        result.ratios["server us/record partstream/raw"] = median(server_cost)
    for run in result.runs:
        if run.extra.get("lost"):
            result.notes.append(f"{run.name}: {run.extra['lost']} records not received in time")
    behind: dict[str, list[float]] = {}
    for run in result.runs:
        kept = run.extra.get("kept_rate", 0.0)
        if kept < E2E_KEPT * o.rate:
            behind.setdefault(run.name, []).append(kept)
    for name, rates in behind.items():
        result.notes.append(
            f"{name} could not keep the rate in {len(rates)} of {o.repeat} round(s): "
            f"delivered {', '.join(f'{r:,.0f}' for r in rates)} of {o.rate:,.0f} records/s"
        )
    result.notes.append("e2e latency from the intended send time (coordinated omission)")
    result.targets.append(
        Target(
            f"e2e p99 latency partstream/raw at {o.rate:g} records/s",
            result.ratios["p99 latency partstream/raw"],
            E2E_P99_GOAL,
            higher_is_better=False,
            void="partstream could not keep the rate" if "partstream" in behind else "",
        )
    )


def _rebalance(b: Bench, result: BenchResult) -> None:
    """``repeat`` rounds of the three events (one side: nothing to alternate); per event the
    median round's ratio, whose figures stand in ``extra["events"]``."""
    from partitions.bench import rebalance

    o = b.opts
    rounds: list[list[dict[str, Any]]] = []
    settings: dict[str, Any] = {}
    for r in range(o.repeat):
        b.say(
            phase_header(
                "rebalance" if o.repeat == 1 else f"rebalance, round {r + 1} of {o.repeat}",
                f"{o.rate:g} records/s over {o.partitions} partitions, "
                f"{o.duration:g} s steady phases, session {rebalance.SESSION_MS} ms",
            )
        )
        got = rebalance.run_rebalance(b.server, b.ns, o, b.say, r)
        settings = got["settings"]
        for e in got["events"]:
            e["round"] = r
            b.say(
                f"{e['event']}: unmoved max {e['unmoved_max_ms']:.1f} ms (at "
                f"{e['unmoved_max_at_ms']:.0f} ms, reconciled at "
                f"{e['reconcile_ms']:.0f} ms) / steady max "
                f"{e['steady_max_ms']:.1f} ms = {e['unmoved_vs_steady']:.2f}x; p99 "
                f"{e['unmoved_p99_ms']:.1f} / {e['steady_p99_ms']:.1f} ms = "
                f"{e['unmoved_vs_steady_p99']:.2f}x"
            )
        rounds.append(got["events"])
    events = []
    for per_round in zip(*rounds, strict=True):
        ordered = sorted(per_round, key=lambda e: e["unmoved_vs_steady"])
        e = dict(ordered[len(ordered) // 2])  # the median round (the upper one of an even count)
        e["round_ratios"] = [x["unmoved_vs_steady"] for x in per_round]
        e["round_ratios_p99"] = [x["unmoved_vs_steady_p99"] for x in per_round]
        events.append(e)
    result.extra.update({"events": events, "settings": settings})
    if o.repeat > 1:
        result.extra["rounds"] = rounds
    for e in events:
        rounds_text = (
            f"; rounds {'/'.join(f'{x:.2f}' for x in e['round_ratios'])}x" if o.repeat > 1 else ""
        )
        result.notes.append(
            f"{e['event']}: reconciled in {e['reconcile_ms']:.0f} ms; {e['moved_partitions']} "
            f"moved (max latency {e['moved_max_ms']:.0f} ms), {e['unmoved_partitions']} unmoved "
            f"(max latency {e['unmoved_max_ms']:.1f} ms at {e['unmoved_max_at_ms']:.0f} ms after "
            f"the event, vs {e['steady_max_ms']:.1f} ms steady, "
            f"p99 {e['unmoved_p99_ms']:.1f} vs {e['steady_p99_ms']:.1f} ms; pause "
            f"{e['unmoved_pause_ms']:.1f} ms){rounds_text}"
        )
        result.ratios[f"{e['event']} unmoved/steady max latency"] = median(e["round_ratios"])
        result.ratios[f"{e['event']} unmoved/steady p99 latency"] = median(e["round_ratios_p99"])
        result.targets.append(
            Target(
                f"rebalance {e['event']}: unmoved max latency / steady max",
                median(e["round_ratios"]),
                REBALANCE_GOAL,
                higher_is_better=False,
            )
        )


MODES: dict[str, Callable[[Bench, BenchResult], None]] = {
    "rebalance": _rebalance,
    "e2e": _e2e,
    "produce": _produce,
    "consume": _consume,
}


def run_bench(
    mode: str,
    opts: BenchOptions,
    *,
    url: str | None = None,
    command: str = "",
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _: None,
    out: Path | None = None,
    plot: Path | None = None,
) -> BenchResult:
    """Run ``mode`` (produce, consume, e2e, rebalance) and return what it measured."""
    progress = progress or Progress()
    replicas = 1 if mode == "produce" and opts.acks == "all" else 0
    with bench_server(url, replicas=replicas) as server:
        b = Bench(server, opts, progress, say)
        with server.connect(b.ns) as conn:
            env = environment(conn, server)
        result = BenchResult(mode, command, opts.to_dict(mode), env)
        try:
            MODES[mode](b, result)
            if opts.peers and mode not in ("produce", "consume"):
                result.notes.append(f"peers: compared in produce and consume only, not {mode}")
        finally:
            b.cleanup()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    if plot is not None:
        from partitions.bench.plot import plot_result

        plot_result(result, plot)
    return result
