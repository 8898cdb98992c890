"""``partstream walkthrough``: the guided tour on the embedded server."""

from __future__ import annotations

import click

from partitions import _walkthrough as walkthrough
from partitions._client.connection import connect
from partitions.cli.common import State, main, pass_state


@main.command("walkthrough")
@click.option("--orders", type=int, default=400, show_default=True, help="Events to produce.")
@pass_state
def walkthrough_cmd(state: State, orders: int) -> None:
    """Produce keyed orders and replay them: partitions, per-key order, time seek.

    Runs in the namespace "demo" unless --namespace is given.
    """
    cfg = state.client_config
    if state.namespace is None:
        cfg = cfg.with_changes(namespace="demo")
    with connect(cfg) as conn:
        walkthrough.run(conn, click.echo, orders=orders)
