"""``partstream metrics serve``: the Prometheus exporter."""

from __future__ import annotations

import click

from partitions._telemetry.exporter import DEFAULT_INTERVAL_S, DEFAULT_PORT
from partitions.cli.common import State, main, pass_state


@main.group()
def metrics() -> None:
    """Prometheus metrics of the deployment (needs the 'metrics' extra)."""


@metrics.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to listen on (0.0.0.0 to be scraped from other machines).",
)  # fmt: skip
@click.option(
    "--interval", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_INTERVAL_S,
    show_default=True, help="Seconds between two scrapes of the deployment.",
)  # fmt: skip
@pass_state
def metrics_serve(state: State, port: int, host: str, interval: float) -> None:
    """Serve /metrics (kafka_exporter-style names) until interrupted."""
    from partitions._telemetry.exporter import serve

    serve(state.conn, host=host, port=port, interval=interval, echo=click.echo)
