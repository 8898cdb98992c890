"""One fault scenario's life: own server, topic, fleet, drain, collect, check, verdict.

A test builds a :class:`Scenario` as a context manager (which kills every process and the
server by pid on the way out, whatever happened), starts workers, injects its fault, then
calls :meth:`Scenario.finish`: wait until the producers are done and the group has no lag,
stop the consumers gracefully, read every log and the dead-letter streams, run the checker
and record the one-line verdict for the session's table.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from partitions.config import ClientConfig
from partitions.connection import Connection, connect
from partitions.offsets import group_lag
from partitions.topics import TopicAdmin, TopicSpec
from tests.faults.checker import Verdict, check
from tests.faults.harness import Fleet, ServerProc, Worker, read_log, wait_for, workdir

VERDICTS: list[Verdict] = []
PARTITIONS = 4
TOPIC = "events"
GROUP = "fleet"


class Scenario:
    """Server + fleet for one scenario; ``with Scenario(...) as s:``."""

    def __init__(
        self,
        name: str,
        fault: str,
        *,
        persistence: str = "always",
        binary: str = "valkey",
        partitions: int = PARTITIONS,
    ) -> None:
        self.name, self.fault = name, fault
        self.persistence, self.binary, self.partitions = persistence, binary, partitions
        self.namespace = "f" + uuid.uuid4().hex[:10]
        self._wd = workdir(name)
        self.dir: Path
        self.server: ServerProc
        self.fleet: Fleet
        self._conn: Connection | None = None
        self.started = time.monotonic()

    def __enter__(self) -> Scenario:
        self.dir = self._wd.__enter__()
        self.server = ServerProc(self.dir, self.persistence, self.binary).start()
        self.fleet = Fleet(self.dir, self.server.url, self.namespace, TOPIC, GROUP)
        TopicAdmin(self.conn()).create(TopicSpec(TOPIC, self.partitions))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.fleet.cleanup()
        finally:
            try:
                if self._conn is not None:
                    self._conn.close()
            finally:
                self.server.stop()
                self._wd.__exit__(exc_type, exc, tb)

    def conn(self) -> Connection:
        """The harness's own connection (direct to the server, never through a proxy)."""
        if self._conn is None:
            self._conn = connect(
                ClientConfig(url=self.server.url, namespace=self.namespace, socket_timeout=5)
            )
        return self._conn

    def reconnect(self) -> Connection:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        return self.conn()

    # -- running ----------------------------------------------------------------------------
    def consumers(self, n: int, **kw: Any) -> list[Worker]:
        ws = [self.fleet.consumer(**kw) for _ in range(n)]
        self.fleet.wait_ready(ws)
        return ws

    def processed_count(self) -> int:
        return sum(1 for w in self.fleet.consumers() for e in w.events() if e.get("ev") == "proc")

    def wait_processing(self, at_least: int, timeout: float = 20.0) -> None:
        wait_for(lambda: self.processed_count() >= at_least, timeout, f"{at_least} processed")

    def lag(self) -> int:
        return group_lag(self.conn(), GROUP, TOPIC).total_lag

    def drain(self, timeout: float = 40.0) -> None:
        """Until every producer exited and the group has nothing undelivered or unacked."""
        for w in self.fleet.workers:
            if w.role == "produce":
                w.popen.wait(timeout=timeout)

        last: list[object] = []

        def drained() -> bool:
            try:
                lag = group_lag(self.conn(), GROUP, TOPIC)
            except Exception as err:  # the server may still be loading: ask again
                last[:] = [err]
                return False
            last[:] = [[(p.partition, p.pending, p.lag) for p in lag.partitions]]
            return lag.total_lag == 0

        try:
            wait_for(drained, timeout, "the group to drain (lag 0)", step=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; last: {last}") from None

    def dead_letters(self) -> list[tuple[int, str]]:
        out = []
        c = self.conn()
        for p in range(self.partitions):
            for _, fields in c.client.xrange(c.keys.dlq(TOPIC, p)):
                out.append((p, fields[b"dlq.id"].decode()))
        return out

    def events(self, role: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for w in self.fleet.workers:
            if w.role == role:
                out += read_log(w.log)
        return out

    def finish(self, *, drain: bool = True, **allow: Any) -> Verdict:
        """Drain, stop consumers gracefully, check the logs; records and returns the verdict."""
        if drain:
            self.drain()
        for w in self.fleet.consumers():
            self.fleet.terminate(w)
        verdict = check(
            self.name,
            self.fault,
            self.events("produce"),
            self.events("consume"),
            self.dead_letters(),
            **allow,
        )
        verdict.notes.append(f"{time.monotonic() - self.started:.0f}s")
        VERDICTS.append(verdict)
        print(verdict.line())
        for d in verdict.details[:20]:
            print("  ", d)
        return verdict

    def note(self, verdict: Verdict, text: str) -> None:
        verdict.notes.insert(0, text)
