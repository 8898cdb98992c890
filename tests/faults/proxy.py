"""A small TCP fault proxy for the tests: loopback only, thread per direction, bounded.

Clients connect to ``127.0.0.1:<proxy.port>``; each connection is piped to the server.
Faults, switchable at any time from the test:

* :meth:`FaultProxy.latency` adds a delay before every forwarded chunk;
* :meth:`FaultProxy.blackhole` holds the bytes of one or both directions (``"up"`` =
  client->server, ``"down"`` = server->client) as a partitioned network does: nothing is
  lost on the wire, nothing arrives until :meth:`heal`; clients time out meanwhile.
  ``blackhole("down")`` is the nasty case: requests execute, their replies never come.

:meth:`close` closes the listener and every piped socket; all threads are daemons.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.helpers import free_port


class FaultProxy:
    """Pipes 127.0.0.1:port to 127.0.0.1:upstream_port, with injectable faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._cond = threading.Condition()
        self._delay = 0.0
        self._held = {"up": False, "down": False}
        self._socks: list[socket.socket] = []
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    # -- faults -------------------------------------------------------------------------------
    def latency(self, ms: float) -> None:
        with self._cond:
            self._delay = ms / 1000

    def blackhole(self, direction: str = "both") -> None:
        with self._cond:
            for d in ("up", "down"):
                if direction in (d, "both"):
                    self._held[d] = True

    def heal(self) -> None:
        with self._cond:
            self._delay = 0.0
            self._held = {"up": False, "down": False}
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._held = {"up": False, "down": False}
            self._cond.notify_all()
            socks, self._socks = self._socks, []
        self._listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    # -- piping -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._cond:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._socks += [client, server]
                self.connections += 1
            for src, dst, d in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, d), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._cond:
                    while self._held[direction] and not self._closed:
                        self._cond.wait(0.2)
                    delay = self._delay
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
