"""``partstream demo`` and ``partstream dashboard``."""

from __future__ import annotations

from collections.abc import Callable

import click

from partitions._client.connection import connect
from partitions._client.server import EmbeddedServer
from partitions.cli.common import State, main, pass_state


def _serve() -> Callable[..., None]:
    """The dashboard's ``serve``, or a clear error when the web server is not installed."""
    try:
        import uvicorn  # noqa: F401  (serve() imports it late; fail here, before any work)

        from partitions.dashboard import serve
    except ModuleNotFoundError as err:
        if err.name not in ("starlette", "uvicorn") and not str(err.name).startswith(
            ("starlette.", "uvicorn.")
        ):
            raise
        raise click.ClickException(
            f"the dashboard needs its web server ({err.name} is not installed): "
            "pip install 'partstream[dashboard]'"
        ) from None
    return serve


@main.command("demo")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@pass_state
def demo_cmd(state: State, port: int, host: str) -> None:
    """Run the live demo: topic, consumer processes and dashboard (namespace "demo").

    Ctrl-C (or SIGTERM) stops everything it started: the dashboard, the consumer processes
    and, when no server was configured and none was running, the embedded server it started."""
    serve = _serve()
    cfg = state.client_config
    if state.namespace is None:
        cfg = cfg.with_changes(namespace="demo")
    embedded = None if cfg.url is not None else EmbeddedServer(cfg.data_dir)
    started = embedded is not None and not embedded.is_running()
    try:
        with connect(cfg) as conn:
            also = "the embedded server it started" if started else ""
            serve(conn, host=host, port=port, echo=click.echo, also_stops=also)
    finally:
        if started and embedded is not None:
            click.echo(f"Stopping the embedded server it started (pid {embedded.pid()})...")
            embedded.stop()


@main.command("dashboard")
@click.option("--topic", default="orders", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@pass_state
def dashboard_cmd(state: State, topic: str, port: int, host: str) -> None:
    """Serve the dashboard over an existing deployment (no processes are started)."""
    serve = _serve()
    with connect(state.client_config) as conn:
        serve(conn, host=host, port=port, topic=topic, start_demo=False, echo=click.echo)
