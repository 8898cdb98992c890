"""The live dashboard and the demo: a web page over a partstream deployment.

``partstream demo`` starts everything on the embedded server (topic from config/demo.toml, a
fleet of real consumer processes, the page); ``partstream dashboard`` shows an existing
deployment. See :mod:`partitions.dashboard.app`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from partitions._admin import apply as apply_mod
from partitions._client.connection import Connection
from partitions._walkthrough import demo_declared
from partitions.dashboard.app import Dashboard, create_app
from partitions.dashboard.fleet import Fleet

log = logging.getLogger("partstream.demo")

DEMO_TOPIC = "orders"
DEMO_FLEET = {"notifications": 2, "analytics": 1}


def demo_config() -> apply_mod.Declared:
    """The demo's declaration (config/demo.toml, shipped as package data)."""
    return demo_declared()


def serve(
    conn: Connection,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    topic: str = DEMO_TOPIC,
    fleet_plan: dict[str, int] | None = None,
    start_demo: bool = True,
    echo: Callable[[str], None] = print,
    runtime_dir: Path | None = None,
    ready: Callable[[str], None] | None = None,
    also_stops: str = "",
) -> None:
    """Run the dashboard until interrupted; with ``start_demo`` also apply the demo config,
    start the consumer fleet and produce a first batch. Stops every process it started."""
    import uvicorn

    fleet: Fleet | None = None
    dash: Dashboard | None = None
    try:
        if start_demo:
            actions = apply_mod.execute(conn, demo_config())
            echo("Applied the demo config: " + "; ".join(str(a) for a in actions))
            fleet = Fleet(conn.url, conn.keys.ns, topic, runtime_dir=runtime_dir)
            for group, n in (fleet_plan or DEMO_FLEET).items():
                for _ in range(n):
                    w = fleet.add(group)
                    echo(f"Started consumer {w.worker_id} (pid {w.pid})")
        dash = Dashboard(conn, topic, fleet)
        if start_demo:
            dash.produce(200, None, None)
        app = create_app(dash)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        url = f"http://{host}:{port}/"
        # ``also_stops``: what the caller stops after this returns (the demo's own server).
        stopped = (["every consumer it started"] if fleet else []) + (
            [also_stops] if also_stops else []
        )
        also = " and " + " and ".join(stopped) if stopped else ""
        echo(f"Dashboard at {url}  (Ctrl-C stops it{also})")
        if ready is not None:
            ready(url)
        # uvicorn re-raises the SIGTERM it caught once it has shut down; turn it into an
        # exception so the fleet below is stopped instead of the process dying on the spot.
        previous = signal.signal(signal.SIGTERM, _raise_exit)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        if fleet is not None:
            echo("Stopping the consumer fleet...")
            fleet.stop_all()
        if dash is not None:
            with contextlib.suppress(Exception):
                dash.close()


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
