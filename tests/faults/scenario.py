"""One fault scenario's life: own server, topic, fleet, drain, collect, check, verdict.

A test builds a :class:`Scenario` as a context manager (which kills every process and the
server by pid on the way out, whatever happened), starts workers, injects its fault, then
calls :meth:`Scenario.finish`: wait until the producers are done and every group has no lag,
stop the consumers gracefully, read every log, the dead-letter streams and what the streams
still hold, run the checker (which also checks exit codes and produced == count) and record
the one-line verdict for the session's table. A drain that times out is a failure of the
verdict, not an exception: the verdict still says what the logs show.

Scenario bodies are plain functions registered with :func:`scenario` (name -> function
returning its :class:`Verdict`), so ``python -m tests.faults.soak`` can run them again with
longer parameters; a test calls one and passes its verdict to :func:`assert_verdict`.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import partitions
from partitions._admin.groups import group_lag
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import UnknownTopicError
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect
from tests.faults.checker import DeadLetter, Verdict, check
from tests.faults.harness import Fleet, Worker, read_log, workdir
from tests.helpers import ServerProc, layout, wait_for

VERDICTS: list[Verdict] = []
PRINT = [True]  # Scenario.finish prints each verdict (the soak prints its own lines)
LIB = str(Path(partitions.__file__).resolve().parent)  # workers must import the same library
PARTITIONS = 4
TOPIC = "events"
GROUP = "fleet"

# A short session for the scenarios that need an eviction to happen within the test's time
# (the default is 30 s): they say so in their docstring, as scenarios about this setting.
SHORT_SESSION: dict[str, Any] = {"session_ms": 1000}


@dataclass
class Registered:
    """A scenario function, and the known library bug that makes it fail today (if any)."""

    fn: Callable[..., Verdict]
    known: str = ""  # the xfail reason: the bug, precisely
    fails_on: tuple[str, ...] = ()  # the verdict categories that bug fails
    soak: dict[str, Any] = field(default_factory=dict)  # longer parameters for the soak


REGISTRY: dict[str, Registered] = {}


def scenario(
    name: str,
    *,
    known: str = "",
    fails_on: tuple[str, ...] = (),
    soak: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Verdict]], Callable[..., Verdict]]:
    """Register a scenario body under ``name`` (``soak``: its long variant's keyword args)."""

    def wrap(fn: Callable[..., Verdict]) -> Callable[..., Verdict]:
        REGISTRY[name] = Registered(fn, known, fails_on, dict(soak or {}))
        return fn

    return wrap


class KnownFailure(AssertionError):
    """The verdict fails only on what a known library bug fails (a strict xfail's raises=)."""


def assert_verdict(v: Verdict, known: Collection[str] = ()) -> None:
    """Pass an OK verdict; raise KnownFailure if it fails only on the ``known`` categories,
    AssertionError otherwise (so an xfail never hides an unrelated failure)."""
    if v.ok:
        return
    if known and v.failed_on() <= set(known):
        raise KnownFailure(v.report())
    raise AssertionError(v.report())


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
        groups: tuple[str, ...] = (GROUP,),
        maxmemory: str | None = None,
    ) -> None:
        self.name, self.fault = name, fault
        self.persistence, self.binary, self.partitions = persistence, binary, partitions
        self.groups = groups
        self.maxmemory = maxmemory
        self.namespace = "f" + uuid.uuid4().hex[:10]
        self._wd = workdir(name)
        self.dir: Path
        self.server: ServerProc
        self.fleet: Fleet
        self._conn: Connection | None = None
        self.started = time.monotonic()

    def __enter__(self) -> Scenario:
        self.dir = self._wd.__enter__()
        self.server = ServerProc(
            self.dir, self.persistence, self.binary, maxmemory=self.maxmemory
        ).start()
        self.fleet = Fleet(self.dir, self.server.url, self.namespace, TOPIC, self.groups[0])
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

    def processed_count(self, group: str | None = None) -> int:
        return sum(
            1
            for w in self.fleet.consumers()
            if group is None or w.group == group
            for e in w.events()
            if e.get("ev") == "proc"
        )

    def wait_processing(self, at_least: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.processed_count() >= at_least, timeout, f"{at_least} processed")

    def lag(self, group: str = GROUP) -> int:
        return group_lag(self.conn(), group, TOPIC).total_lag

    def topic_partitions(self) -> int:
        """The topic's partition count now (the scenario's own if the server lost the topic)."""
        try:
            return TopicAdmin(self.conn()).get(TOPIC).partitions
        except UnknownTopicError:
            return self.partitions

    def drain(self, timeout: float = 60.0) -> str | None:
        """Until every producer exited and every group has nothing undelivered or unacked;
        returns what went wrong (None: drained)."""
        end = time.monotonic() + timeout
        for w in self.fleet.workers:
            if w.role == "produce" and not w.stopped:
                try:
                    w.popen.wait(timeout=max(end - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    return f"producer {w.name} still running after {timeout:.0f}s"

        last: list[object] = []

        def drained() -> bool:
            try:
                lags = {g: group_lag(self.conn(), g, TOPIC) for g in self.groups}
            except Exception as err:  # the server may still be loading: ask again
                last[:] = [err]
                return False
            last[:] = [
                {g: [(p.partition, p.pending, p.lag) for p in lag.partitions if p.lag]}
                for g, lag in lags.items()
            ]
            return all(lag.total_lag == 0 for lag in lags.values())

        try:
            left = round(max(end - time.monotonic(), 1), 1)
            wait_for(drained, left, "the groups to drain", step=0.2)
        except AssertionError as err:
            return f"{err}; (partition, pending, lag) left: {last}"
        return None

    def dead_letters(self) -> list[DeadLetter]:
        out = []
        c = self.conn()
        for p in range(self.topic_partitions()):
            for _, f in c.client.xrange(c.keys.dlq(layout(c, TOPIC), p)):
                if b"dlq.id" not in f:
                    continue
                out.append(
                    DeadLetter(
                        p,
                        f[b"dlq.id"].decode(),
                        f[b"dlq.group"].decode(),
                        f[b"dlq.reason"].decode(),
                    )
                )
        return out

    def present(self) -> set[tuple[int, str]]:
        """Every (partition, id) the topic's streams hold now."""
        c = self.conn()
        out = set()
        for p in range(self.topic_partitions()):
            for rid, _ in c.client.xrange(c.keys.stream(layout(c, TOPIC), p)):
                out.add((p, rid.decode()))
        return out

    def events(self, role: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for w in self.fleet.workers:
            if w.role == role:
                out += read_log(w.log)
        return out

    def finish(self, *, drain: bool = True, drain_timeout: float = 60.0, **allow: Any) -> Verdict:
        """Drain, stop consumers gracefully, check the logs; records and returns the verdict.

        ``allow``: keyword arguments of :func:`~tests.faults.checker.check` (expected dead
        letters, allowed loss or doubt, ``expected_count`` if not the producers' counts)."""
        not_drained = self.drain(drain_timeout) if drain else None
        for w in self.fleet.consumers():
            if not w.stopped:
                self.fleet.terminate(w)
        for w in self.fleet.workers:
            if w.alive():  # a producer that did not finish: its exit code fails the run
                self.fleet.terminate(w)
        allow.setdefault(
            "expected_count", sum(w.count for w in self.fleet.workers if w.role == "produce")
        )
        present: set[tuple[int, str]] | None = None
        dead: list[DeadLetter] = []
        with contextlib.suppress(Exception):  # a scenario may leave the server unreachable
            present, dead = self.present(), self.dead_letters()
        verdict = check(
            self.name,
            self.fault,
            self.events("produce"),
            self.events("consume"),
            dead,
            groups=self.groups,
            present=present,
            workers=self.fleet.exits(),
            **allow,
        )
        if not_drained:
            verdict.run_failures.append(not_drained)
        for w in self.fleet.workers:
            lib = next((e.get("lib") for e in w.events() if e.get("ev") == "ready"), LIB)
            if lib != LIB:
                verdict.run_failures.append(f"{w.name} imported the library from {lib}, not {LIB}")
        if present is None:
            verdict.notes.append("server unreachable at the end: streams not read")
        verdict.notes.append(f"{time.monotonic() - self.started:.0f}s")
        VERDICTS.append(verdict)
        if PRINT[0]:
            print(verdict.line())
            for d in verdict.details[:20]:
                print("  ", d)
        return verdict

    def note(self, verdict: Verdict, text: str) -> None:
        verdict.notes.insert(0, text)
