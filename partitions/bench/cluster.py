"""``partstream bench produce --cluster N[,M,...]``: partstream's producer on clusters.

For each size N it starts a private local cluster of N Valkey primaries (or, with
``--cluster-url``, uses that cluster: its primaries count as its size), creates the bench
topic there and runs the same producer as the single-node side, in the same alternating
rounds. After each run it reads, per primary, the records its partitions hold (XLEN of the
topic's streams on that node) and the server CPU the run cost it (INFO cpu before and
after, system + user), so the result shows each primary's share of the load (3/3/2 of 8
partitions on 3 primaries: 37.5/37.5/25 %) and how the rate scales with the node count.

On one machine every node shares the client's cores: more nodes add per-node pipelines
(round trips) but no CPU, so the rate cannot scale past the cores there are. The notes say
how many cores the run had.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from partitions._admin.topics import TopicAdmin
from partitions._base.errors import ConfigError
from partitions._client.connection import Connection
from partitions.bench import produce
from partitions.bench.env import BenchServer, bench_cluster
from partitions.bench.stats import RunResult, median

MAX_MASTERS = 8


def parse_sizes(spec: str | int | tuple[int, ...] | None) -> tuple[int, ...]:
    """``"3"`` or ``"1,2,3"`` (or ints) as cluster sizes; ``0``/empty/None = none."""
    if spec is None or spec == "" or spec == 0:
        return ()
    if isinstance(spec, bool):
        raise ConfigError(f"bench: cluster must be sizes like 3 or 1,2,3, not {spec!r}")
    parts: list[Any] = (
        [spec]
        if isinstance(spec, int)
        else list(spec)
        if isinstance(spec, tuple)
        else spec.split(",")
    )
    try:
        sizes = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"bench: cluster must be sizes like 3 or 1,2,3, not {spec!r}") from None
    if any(isinstance(p, bool) for p in parts) or not all(1 <= s <= MAX_MASTERS for s in sizes):
        raise ConfigError(f"bench: cluster sizes must be 1..{MAX_MASTERS} masters, not {spec!r}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"bench: cluster sizes repeat: {spec!r}")
    return sizes


@dataclass(frozen=True, slots=True)
class NodeShare:
    """One primary's part of a cluster run."""

    node: str
    partitions: int
    records: int
    cpu_s: float  # server CPU the run cost this node (INFO cpu, system + user)

    def to_dict(self, total: int) -> dict[str, Any]:
        return {
            "node": self.node,
            "partitions": self.partitions,
            "records": self.records,
            "share": round(self.records / total, 4) if total else 0.0,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_record": round(1e6 * self.cpu_s / self.records, 2)
            if self.records
            else None,
        }


def _name(node: Any) -> str:
    return f"{node.host}:{node.port}"


def _primaries(conn: Connection) -> dict[str, Any]:
    client = conn.client
    return {_name(n): client.get_redis_connection(n) for n in client.get_primaries()}


def _cpu(nodes: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, node in nodes.items():
        info = node.info("cpu")
        out[name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


def node_shares(conn: Connection, topic: str, cpu_before: dict[str, float]) -> list[NodeShare]:
    """Per primary: the topic's partitions and records on it, and the CPU since
    ``cpu_before``."""
    layout = TopicAdmin(conn).get(topic).layout
    nodes = _primaries(conn)
    cpu_after = _cpu(nodes)
    parts: dict[str, int] = dict.fromkeys(nodes, 0)
    records: dict[str, int] = dict.fromkeys(nodes, 0)
    for p in range(layout.partitions):
        key = conn.keys.stream(layout, p)
        name = _name(conn.client.get_node_from_key(key))
        parts[name] += 1
        records[name] += int(nodes[name].xlen(key))
    return [
        NodeShare(n, parts[n], records[n], cpu_after[n] - cpu_before.get(n, cpu_after[n]))
        for n in sorted(nodes)
    ]


def side_name(masters: int) -> str:
    return f"partstream-cluster-{masters}"


def sides(
    ns: str,
    opts: Any,
    progress: Any,
    stack: contextlib.ExitStack,
    url: str | None = None,
) -> list[tuple[str, Callable[[int], RunResult]]]:
    """One bench side per cluster size (clusters started in ``stack``, or the one at
    ``url``), each producing the bench topic and recording its per-node shares."""
    servers: list[tuple[int, BenchServer]] = []
    if url:
        server = BenchServer(url, embedded=False)
        with server.connect(ns) as conn:
            if not conn.is_cluster:
                raise ConfigError(f"bench: --cluster-url {conn.redacted_url} is not a cluster")
            servers.append((len(_primaries(conn)), server))
    else:
        servers = [(n, stack.enter_context(bench_cluster(n))) for n in opts.cluster]

    def side(masters: int, server: BenchServer) -> Callable[[int], RunResult]:
        def run(_: int) -> RunResult:
            produce.create_topics(server, ns, opts, produce.PS_TOPIC)
            try:
                with server.connect(ns) as conn:
                    before = _cpu(_primaries(conn))
                result = produce.run_partstream_cluster(server, ns, opts, progress)
                with server.connect(ns) as conn:
                    shares = node_shares(conn, produce.PS_TOPIC, before)
            finally:
                produce.delete_topics(server, ns, produce.PS_TOPIC)
            result.name = side_name(masters)
            result.extra["masters"] = masters
            # Shares of what the nodes hold (the producer's warm-up record included).
            held = sum(s.records for s in shares)
            result.extra["per_node"] = [s.to_dict(held) for s in shares]
            return result

        return run

    return [(side_name(m), side(m, s)) for m, s in servers]


def report(result: Any, rounds: dict[str, list[float]], opts: Any) -> None:
    """Ratios against the single-node run of the same rounds, scaling between the sizes,
    and each primary's share of the median run, as notes and ``extra["cluster"]``."""
    rows = []
    for name in [n for n in rounds if n.startswith("partstream-cluster-")]:
        runs = sorted((r for r in result.runs if r.name == name), key=lambda r: r.rate)
        run = runs[len(runs) // 2]
        vs_single = median([1.0 / x for x in rounds[name] if x > 0])
        result.ratios[f"{name}/partstream"] = vs_single
        rows.append((run.extra["masters"], run, vs_single))
    rows.sort(key=lambda row: row[0])
    summary = []
    smallest = rows[0][1].rate if rows else 0.0
    for masters, run, vs_single in rows:
        per_node = run.extra["per_node"]
        shares = ", ".join(
            f"{n['node']} {100 * n['share']:.1f}% ({n['partitions']} partitions, server CPU "
            f"{n['cpu_s']:.2f} s = {n['cpu_us_per_record'] or 0:.1f} us/record)"
            for n in per_node
        )
        scaling = run.rate / smallest if smallest else 0.0
        result.notes.append(
            f"cluster of {masters} primar{'y' if masters == 1 else 'ies'}: "
            f"{run.rate:,.0f} records/s (median run) = {vs_single:.2f}x the single node, "
            f"{scaling:.2f}x the {rows[0][0]}-primary cluster; per primary: {shares}"
        )
        summary.append(
            {
                "masters": masters,
                "records_per_s": round(run.rate, 1),
                "vs_single_node": round(vs_single, 3),
                "vs_smallest_cluster": round(scaling, 3),
                "per_node": per_node,
            }
        )
    if rows and opts.cluster_url:
        result.notes.append(
            f"cluster: {opts.partitions} partitions, the same producer as the single-node run, "
            "on the cluster given by --cluster-url"
        )
    elif rows:
        cores = os.cpu_count() or 1
        result.notes.append(
            f"cluster: {opts.partitions} partitions, the same producer as the single-node run; "
            f"this machine has {cores} core(s) shared by the client and every node, so more "
            "primaries add per-node pipelines without adding server capacity: scaling with "
            f"the node count is capped at about {cores} node(s)' worth here"
        )
    result.extra["cluster"] = summary
