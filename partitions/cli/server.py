"""``partstream server start|stop|status``: the embedded Valkey server."""

from __future__ import annotations

import click

from partitions.cli.common import emit, format_option, main
from partitions.server import EmbeddedServer


@main.group()
def server() -> None:
    """Manage the embedded Valkey server (used when no --url is given)."""


@server.command("start")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: $PARTSTREAM_DATA_DIR.")
def server_start(data_dir: str | None) -> None:
    """Start the embedded server (no-op if it runs)."""
    srv = EmbeddedServer(data_dir)
    url = srv.ensure_running()
    click.echo(f"Embedded Valkey running at {url} (pid {srv.pid()}, data in {srv.data_dir})")


@server.command("stop")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: $PARTSTREAM_DATA_DIR.")
def server_stop(data_dir: str | None) -> None:
    """Stop the embedded server (it saves its data first)."""
    srv = EmbeddedServer(data_dir)
    click.echo(
        "Stopped the embedded server" if srv.stop() else "The embedded server was not running"
    )


@server.command("status")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: $PARTSTREAM_DATA_DIR.")
@format_option
def server_status(data_dir: str | None, fmt: str) -> None:
    """Show whether the embedded server runs, its pid, URL and data directory."""
    st = EmbeddedServer(data_dir).status()
    data = {"running": st.running, "pid": st.pid, "url": st.url, "data_dir": str(st.data_dir)}
    emit(
        fmt,
        data,
        lambda d: (
            ("running" if d["running"] else "stopped")
            + f" pid={d['pid']} url={d['url']} data_dir={d['data_dir']}"
        ),
    )
