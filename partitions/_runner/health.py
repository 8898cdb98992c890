"""The runner's HTTP endpoint: ``GET /health`` for probes, ``GET /metrics`` for Prometheus.

``/health`` answers 200 while the consumer loop turns and the runner is not stopping, 503
otherwise (a load balancer or Kubernetes takes the process out, or restarts it), with a JSON
body: status, member id, owned partitions, records running and queued, and the run's counts.
``/metrics`` is the exposition of the registry the client metrics record into (when the
runner was given one). Served by the standard library on a daemon thread: nothing to install.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from partitions._runner.runner import Runner


class HealthServer:
    """Serves a :class:`~partitions._runner.runner.Runner`'s health on ``host:port``
    (port 0: a free one, see :attr:`port`)."""

    def __init__(self, runner: Runner, host: str, port: int, registry: Any = None) -> None:
        self.runner, self.registry = runner, registry
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, ctype, body = outer.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="partstream-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route == "/health":
            runner = self.runner
            consumer = runner.consumer
            ok = runner.healthy and consumer is not None
            body = {
                "status": "ok" if ok else ("stopping" if runner.stop.is_set() else "stalled"),
                "group": runner.group,
                "member_id": consumer.member_id if consumer is not None else None,
                "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in runner.owned()),
                **runner.in_flight(),
                **runner.stats.to_dict(),
            }
            return (200 if ok else 503), "application/json", orjson.dumps(body)
        if route == "/metrics" and self.registry is not None:
            import prometheus_client

            return (
                200,
                prometheus_client.CONTENT_TYPE_LATEST,
                prometheus_client.generate_latest(self.registry),
            )
        return 404, "text/plain", b"not found\n"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
