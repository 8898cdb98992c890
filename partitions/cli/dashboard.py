"""``partstream demo`` and ``partstream dashboard``."""

from __future__ import annotations

import click

from partitions._client.connection import connect
from partitions.cli.common import State, main, pass_state


@main.command("demo")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@pass_state
def demo_cmd(state: State, port: int, host: str) -> None:
    """Run the live demo: topic, consumer processes and dashboard (namespace "demo")."""
    from partitions.dashboard import serve

    cfg = state.client_config
    if state.namespace is None:
        cfg = cfg.with_changes(namespace="demo")
    with connect(cfg) as conn:
        serve(conn, host=host, port=port, echo=click.echo)


@main.command("dashboard")
@click.option("--topic", default="orders", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@pass_state
def dashboard_cmd(state: State, topic: str, port: int, host: str) -> None:
    """Serve the dashboard over an existing deployment (no processes are started)."""
    from partitions.dashboard import serve

    with connect(state.client_config) as conn:
        serve(conn, host=host, port=port, topic=topic, start_demo=False, echo=click.echo)
