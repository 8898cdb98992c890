"""``partstream server start|stop|status``: the embedded Valkey server, or a local cluster."""

from __future__ import annotations

from typing import Any

import click

from partitions.cli.common import emit, format_option, main
from partitions.cluster import EmbeddedCluster
from partitions.server import EmbeddedServer

_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Default: $PARTSTREAM_DATA_DIR."
)


def _cluster(
    data_dir: str | None, masters: int = 3, base_port: int | None = None
) -> EmbeddedCluster:
    # The cluster lives beside the single server, in <data dir>/cluster.
    return EmbeddedCluster(
        (EmbeddedServer(data_dir).data_dir / "cluster"), masters=masters, base_port=base_port
    )


@main.group()
def server() -> None:
    """Manage the embedded Valkey server (used when no --url is given) or a local cluster."""


@server.command("start")
@_DATA_DIR
@click.option(
    "--cluster", "masters", type=click.IntRange(1, 64), default=None,
    help="Start a local cluster of this many masters instead (development and tests).",
)  # fmt: skip
@click.option("--base-port", type=int, default=None, help="Cluster: first port (default: free).")
def server_start(data_dir: str | None, masters: int | None, base_port: int | None) -> None:
    """Start the embedded server, or with --cluster N a local N-master cluster (no-op if up)."""
    if masters is not None:
        cl = _cluster(data_dir, masters, base_port)
        url = cl.ensure_running()
        click.echo(
            f"Embedded cluster of {len(cl.ports)} masters running at {url} (data in {cl.data_dir})"
        )
        click.echo(f"Use it with: --url {url}  (or PARTSTREAM_URL={url})")
        return
    srv = EmbeddedServer(data_dir)
    url = srv.ensure_running()
    click.echo(f"Embedded Valkey running at {url} (pid {srv.pid()}, data in {srv.data_dir})")


@server.command("stop")
@_DATA_DIR
@click.option("--cluster", "cluster", is_flag=True, help="Stop the local cluster instead.")
def server_stop(data_dir: str | None, cluster: bool) -> None:
    """Stop the embedded server or the local cluster (they save their data first)."""
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
                    "slots": f"{n.slots[0]}-{n.slots[1]}",
                }
                for n in cl.status()
            ],
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
            f"  node 127.0.0.1:{n['port']} {'running' if n['running'] else 'stopped'} "
            f"pid={n['pid']} slots={n['slots']}"
            for n in cl["nodes"]
        ]
    return "\n".join(lines)
