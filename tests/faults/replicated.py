"""Fault scenarios on replicated servers: a primary with a replica behind three Sentinels, or
a cluster whose masters have replicas. Everything is started by the scenario from the same
``valkey-server`` binary (the embedded helpers :class:`~partitions._client.replicas.
EmbeddedReplicaSet` and :class:`~partitions._client.cluster.EmbeddedCluster`, each in the scenario's
own directory on free loopback ports) and stopped by pid on the way out, whatever happened.

:class:`ReplicatedScenario` is a :class:`~tests.faults.scenario.Scenario` whose server is such
a set: the fleet, the drain, the checker and the verdict table are the suite's own.
:func:`acked_but_gone` measures what a failover lost: acknowledged sends whose entry the
promoted primary does not have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import TracebackType
from typing import Any

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.cluster import EmbeddedCluster
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect
from partitions._client.replicas import EmbeddedReplicaSet
from tests.faults.harness import Fleet
from tests.faults.scenario import GROUP, TOPIC, Scenario
from tests.helpers import layout, wait_for

# How long Sentinels / cluster nodes wait before they call a silent primary dead: short, so a
# failover fits in a bounded test, long enough that a loaded 2-core machine does not fail
# over by mistake.
DOWN_AFTER_MS = 1500


class _SetServer:
    """What :class:`Scenario` needs of its ``server``: the URL the fleet uses, and stop()."""

    def __init__(self, url: str, stop: Any) -> None:
        self.url = url
        self.stop = stop


class ReplicatedScenario(Scenario):
    """A scenario on a primary + replica behind 3 Sentinels (``kind="sentinel"``) or on a
    3-master cluster with one replica per master (``kind="cluster"``)."""

    def __init__(self, name: str, fault: str, *, kind: str = "sentinel", **kw: Any) -> None:
        super().__init__(name, fault, **kw)
        if kind not in ("sentinel", "cluster"):
            raise ValueError(kind)
        self.kind = kind
        self.replica_set: EmbeddedReplicaSet | None = None
        self.cluster: EmbeddedCluster | None = None
        self.killed: list[int] = []

    def __enter__(self) -> ReplicatedScenario:
        self.dir = self._wd.__enter__()
        try:
            if self.kind == "sentinel":
                rs = self.replica_set = EmbeddedReplicaSet(
                    self.dir / "rs",
                    replicas=1,
                    sentinels=3,
                    down_after_ms=DOWN_AFTER_MS,
                    failover_timeout_ms=10_000,
                )
                url = rs.ensure_running(timeout=60)
                self.server = _SetServer(url, rs.stop)  # type: ignore[assignment]
            else:
                cl = self.cluster = EmbeddedCluster(
                    self.dir / "cluster", masters=3, replicas=1, node_timeout_ms=DOWN_AFTER_MS
                )
                url = cl.ensure_running(timeout=90)
                self.server = _SetServer(url, cl.stop)  # type: ignore[assignment]
            self.fleet = Fleet(self.dir, url, self.namespace, TOPIC, GROUP)
            TopicAdmin(self.conn()).create(TopicSpec(TOPIC, self.partitions))
        except BaseException:
            self.__exit__(*sys.exc_info())  # keeps the logs of a set that failed to start
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            with contextlib.suppress(AttributeError):
                self.fleet.cleanup()
        finally:
            try:
                if self._conn is not None:
                    self._conn.close()
            finally:
                if self.replica_set is not None:
                    self.replica_set.stop(timeout=5)
                if self.cluster is not None:
                    self.cluster.stop(timeout=5)
                self._wd.__exit__(exc_type, exc, tb)

    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = connect(
                ClientConfig(url=self.server.url, namespace=self.namespace, socket_timeout=5)
            )
        return self._conn

    # -- the fault --------------------------------------------------------------------------
    def primary_port(self, key: str | None = None) -> int:
        """The port of the primary (on a cluster: of the one serving ``key``)."""
        if self.replica_set is not None:
            port = self.replica_set.primary_port()
            assert port is not None, "no primary"
            return port
        assert self.cluster is not None and key is not None
        from partitions._client.nodes import node_for_key

        node = node_for_key(self.conn(), key)
        return int(node.connection_pool.connection_kwargs["port"])

    def kill_primary(self, key: str | None = None, timeout: float = 45.0) -> tuple[int, float]:
        """kill -9 the primary (serving ``key`` on a cluster) and wait until a replica was
        promoted in its place. Returns (killed port, seconds until the promotion)."""
        port = self.primary_port(key)
        members = self.replica_set or self.cluster
        assert members is not None
        pid = members.pid(port)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        self.killed.append(port)
        t0 = time.monotonic()

        def promoted() -> bool:
            if self.replica_set is not None:
                now = self.replica_set.primary_port()
                if now is None or now == port or self.replica_set.role(now) != "primary":
                    return False
            else:
                assert self.cluster is not None
                primaries = self.cluster.primary_ports()
                if port in primaries or len(primaries) != len(self.cluster.ports) // 2:
                    return False
            try:  # and the URL leads there (the Sentinels agree it is up)
                self.conn().client.ping()
            except Exception:
                return False
            return True

        wait_for(promoted, timeout, f"a replica promoted in place of {port}", step=0.1)
        return port, time.monotonic() - t0

    def restart_killed(self, timeout: float = 90.0) -> float:
        """Start the killed nodes again (an operator bringing the machine back): they rejoin
        as replicas of the promoted primaries. Returns the seconds until all are in sync."""
        t0 = time.monotonic()
        members = self.replica_set or self.cluster
        assert members is not None
        members.ensure_running(timeout=timeout)
        return time.monotonic() - t0


def acked_but_gone(s: Scenario) -> list[tuple[int, str]]:
    """Acknowledged sends (partition, id) whose entry the current primaries do not have: what
    the old primary took with it (on a trimmed topic this would also count trims; the
    scenarios here never trim)."""
    acked = {(e["p"], e["id"]) for e in s.events("produce") if e.get("ev") == "sent" and e["ok"]}
    present: set[tuple[int, str]] = set()
    c = s.conn()
    for p in range(s.partitions):
        key = c.keys.stream(layout(c, TOPIC), p)
        from partitions._client.nodes import execute_on_key

        last = "-"
        while True:
            page = execute_on_key(c, key, "XRANGE", key, last, "+", "COUNT", 5000)
            ids = [(i.decode() if isinstance(i, bytes) else i) for i, _ in page]
            if last != "-" and ids and ids[0] == last:
                ids = ids[1:]
            if not ids:
                break
            present.update((p, i) for i in ids)
            last = ids[-1]
    return sorted(acked - present)
