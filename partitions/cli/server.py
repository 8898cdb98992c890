"""``partstream server start|stop|status``: the embedded Valkey server, a local cluster, or a
local primary with replicas (and Sentinels)."""

from __future__ import annotations

from typing import Any

import click

from partitions._client.cluster import EmbeddedCluster
from partitions._client.replicas import EmbeddedReplicaSet
from partitions._client.server import EmbeddedServer
from partitions.cli.common import emit, format_option, main

_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Default: $PARTSTREAM_DATA_DIR."
)


def _cluster(
    data_dir: str | None, masters: int = 3, base_port: int | None = None, replicas: int = 0
) -> EmbeddedCluster:
    # The cluster lives beside the single server, in <data dir>/cluster.
    return EmbeddedCluster(
        (EmbeddedServer(data_dir).data_dir / "cluster"),
        masters=masters,
        base_port=base_port,
        replicas=replicas,
    )


def _replica_set(data_dir: str | None, replicas: int = 1, sentinels: int = 0) -> EmbeddedReplicaSet:
    # The replica set lives beside the single server, in <data dir>/replicas.
    return EmbeddedReplicaSet(
        EmbeddedServer(data_dir).data_dir / "replicas", replicas=replicas, sentinels=sentinels
    )


@main.group()
def server() -> None:
    """Manage the embedded Valkey server (used when no --url is given) or a local cluster."""


@server.command("start")
@_DATA_DIR
@click.option(
    "--cluster",
    "masters",
    type=click.IntRange(1, 64),
    default=None,
    help="Start a local cluster of this many masters instead (development and tests).",
)
@click.option(
    "--replicas",
    type=click.IntRange(0, 8),
    default=None,
    help="Replicas per primary: with --cluster, per master; alone, a primary with this many "
    "replicas (try acks='all' and failover locally).",
)
@click.option(
    "--sentinel",
    is_flag=True,
    help="With --replicas: three Sentinels that promote a replica when the primary dies; "
    "prints the redis+sentinel:// URL.",
)
@click.option("--base-port", type=int, default=None, help="Cluster: first port (default: free).")
def server_start(
    data_dir: str | None,
    masters: int | None,
    replicas: int | None,
    sentinel: bool,
    base_port: int | None,
) -> None:
    """Start the embedded server, or a local cluster (--cluster N [--replicas R]), or a local
    primary with replicas (--replicas R [--sentinel]). A no-op for what already runs."""
    if sentinel and masters is not None:
        raise click.UsageError("--sentinel is for a primary with replicas, not a cluster")
    if sentinel and not replicas:
        raise click.UsageError("--sentinel needs --replicas 1 or more (a replica to promote)")
    if masters is not None:
        cl = _cluster(data_dir, masters, base_port, replicas or 0)
        url = cl.ensure_running(timeout=60)
        extra = f" with {cl.replicas} replica(s) each" if cl.replicas else ""
        click.echo(
            f"Embedded cluster of {cl.masters} masters{extra} running at {url} "
            f"(data in {cl.data_dir})"
        )
        click.echo(f"Use it with: --url {url}  (or PARTSTREAM_URL={url})")
        return
    if replicas is not None:
        rs = _replica_set(data_dir, replicas, 3 if sentinel else 0)
        url = rs.ensure_running(timeout=60)
        sentinels = f" behind {rs.sentinels} Sentinels" if rs.sentinels else ""
        click.echo(
            f"Embedded primary with {rs.replicas} replica(s){sentinels} running at {url} "
            f"(data in {rs.data_dir})"
        )
        click.echo(f"Use it with: --url {url}  (or PARTSTREAM_URL={url})")
        return
    srv = EmbeddedServer(data_dir)
    url = srv.ensure_running()
    click.echo(f"Embedded Valkey running at {url} (pid {srv.pid()}, data in {srv.data_dir})")


@server.command("stop")
@_DATA_DIR
@click.option("--cluster", "cluster", is_flag=True, help="Stop the local cluster instead.")
@click.option("--replicas", is_flag=True, help="Stop the local primary with replicas instead.")
def server_stop(data_dir: str | None, cluster: bool, replicas: bool) -> None:
    """Stop the embedded server, the local cluster or the replica set (data is saved first)."""
    if replicas:
        stopped = _replica_set(data_dir).stop()
        click.echo(
            "Stopped the embedded replica set"
            if stopped
            else "The embedded replica set was not running"
        )
        return
    if cluster:
        stopped = _cluster(data_dir).stop()
        click.echo(
            "Stopped the embedded cluster" if stopped else "The embedded cluster was not running"
        )
        return
    srv = EmbeddedServer(data_dir)
    click.echo(
        "Stopped the embedded server" if srv.stop() else "The embedded server was not running"
    )


@server.command("status")
@_DATA_DIR
@format_option
def server_status(data_dir: str | None, fmt: str) -> None:
    """Show whether the embedded server (and a local cluster, if any) runs, with pids and URLs."""
    st = EmbeddedServer(data_dir).status()
    data: dict[str, Any] = {
        "running": st.running,
        "pid": st.pid,
        "url": st.url,
        "data_dir": str(st.data_dir),
    }
    cl = _cluster(data_dir)
    if cl.ports:
        data["cluster"] = {
            "running": cl.is_running(),
            "url": cl.url,
            "nodes": [
                {
                    "port": n.port,
                    "pid": n.pid,
                    "running": n.running,
                    "role": n.role,
                    "slots": n.slots,
                }
                for n in cl.status()
            ],
        }
    rs = _replica_set(data_dir)
    if rs.node_ports:
        data["replicas"] = {
            "running": rs.is_running(),
            "stopped": not rs.pids(),
            "url": rs.url,
            "primary": rs.primary_port(),
            "nodes": [{"port": m.port, "pid": m.pid, "role": m.role} for m in rs.status()],
        }
    emit(fmt, data, _status_text)


def _status_text(d: dict[str, Any]) -> str:
    lines = [
        ("running" if d["running"] else "stopped")
        + f" pid={d['pid']} url={d['url']} data_dir={d['data_dir']}"
    ]
    if cl := d.get("cluster"):
        lines.append(f"cluster {'ok' if cl['running'] else 'down'} url={cl['url']}")
        lines += [
            f"  node 127.0.0.1:{n['port']} {n['role']} pid={n['pid']}"
            + (f" slots={n['slots']}" if n["slots"] else "")
            for n in cl["nodes"]
        ]
    if rs := d.get("replicas"):
        state = "ok" if rs["running"] else "stopped" if rs["stopped"] else "degraded"
        lines.append(f"replica set {state} url={rs['url']}")
        lines += [f"  127.0.0.1:{n['port']} {n['role']} pid={n['pid']}" for n in rs["nodes"]]
    return "\n".join(lines)
