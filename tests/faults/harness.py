"""The fault harness: worker processes, fault injection, log collection.

Everything here is started by the test and stopped by pid in ``finally``: the server is a
:class:`tests.helpers.ServerProc` (a ``valkey-server`` or ``redis-server`` child on a free
loopback port with the persistence a scenario needs); a :class:`Fleet` runs producer and
consumer processes of :mod:`tests.faults.worker`, each writing JSON lines to its own file;
:class:`FaultProxy` (in :mod:`tests.faults.proxy`) sits between clients and server when a
scenario needs latency or a black hole. The machine's Redis on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checker import WorkerExit
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


@dataclass
class Worker:
    """A producer or consumer process of ``worker.py`` and its JSON-lines log."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path
    group: str = ""
    count: int = 0  # a producer: the records it was asked to send
    stopped: bool = False
    # The exit codes the scenario expects: 0 (it ends or is stopped gracefully), -9 once the
    # scenario killed it (or it killed itself), 3 after a StateLostError, ...
    expected_exit: tuple[int, ...] = (0,)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def events(self) -> list[dict[str, Any]]:
        return read_log(self.log)

    def exit(self) -> WorkerExit:
        return WorkerExit(self.name, self.role, self.popen.poll(), self.expected_exit)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a worker log (a torn last line after kill -9 is skipped)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclass
class Fleet:
    """Spawns worker processes and always kills them by pid in :meth:`cleanup`."""

    workdir: Path
    url: str
    namespace: str
    topic: str
    group: str
    workers: list[Worker] = field(default_factory=list)
    counter: int = 0

    def _spawn(
        self, role: str, extra: list[str], url: str | None = None, group: str | None = None
    ) -> Worker:
        self.counter += 1
        group = group or self.group
        name = f"{role[0]}{self.counter}"
        log = self.workdir / f"{name}.jsonl"
        cmd = [sys.executable, str(WORKER), role, "--url", url or self.url]
        cmd += ["--ns", self.namespace, "--topic", self.topic, "--group", group]
        cmd += ["--name", name, "--log", str(log), *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        err = open(self.workdir / f"{name}.stderr", "wb")  # noqa: SIM115 - child owns it
        try:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=err)
        finally:
            err.close()
        w = Worker(name, role, popen, log, group=group)
        self.workers.append(w)
        return w

    def producer(self, *, count: int, keys: int, rate: float, **kw: Any) -> Worker:
        """A producer of ``count`` records over ``keys`` keys at ``rate``/s; ``kw``: flags."""
        extra = ["--count", str(count), "--keys", str(keys), "--rate", str(rate)]
        url = kw.pop("url", None)
        extra += _flags(kw)
        w = self._spawn("produce", extra, url)
        w.count = count
        return w

    def consumer(self, *, group: str | None = None, **kw: Any) -> Worker:
        """A consumer of ``group`` (default: the fleet's); ``kw``: worker flags."""
        url = kw.pop("url", None)
        return self._spawn("consume", _flags(kw), url, group)

    def consumers(self) -> list[Worker]:
        return [w for w in self.workers if w.role == "consume"]

    def live_consumers(self) -> list[Worker]:
        return [w for w in self.consumers() if w.alive() and not w.stopped]

    def wait_ready(self, workers: list[Worker], timeout: float = 20.0) -> None:
        """Until every worker logged ``ready`` (a consumer: joined its group)."""

        def ok() -> bool:
            for w in workers:
                if not w.alive():
                    raise AssertionError(f"{w.name} died: {stderr_tail(self.workdir, w)}")
            return all(any(e["ev"] == "ready" for e in w.events()) for w in workers)

        wait_for(ok, timeout, "workers ready")

    def terminate(self, w: Worker, timeout: float = 15.0) -> None:
        """SIGTERM (graceful close: commit, release, leave) and wait for the exit; a worker
        that does not exit in time is killed, and its exit code (-9) fails the run."""
        if w.alive():
            os.kill(w.pid, signal.SIGTERM)
            try:
                w.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(w.pid, signal.SIGKILL)
                w.popen.wait(timeout=10)
        w.stopped = True

    def kill9(self, w: Worker) -> None:
        w.expected_exit = (-signal.SIGKILL,)
        os.kill(w.pid, signal.SIGKILL)
        w.popen.wait(timeout=10)
        w.stopped = True

    def exits(self) -> list[WorkerExit]:
        return [w.exit() for w in self.workers]

    def cleanup(self) -> None:
        for w in self.workers:
            if w.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
                    os.kill(w.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.popen.wait(timeout=10)


def _flags(kw: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in kw.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            out.append(flag)
        elif v is not None and v is not False:
            out += [flag, str(v)]
    return out


def stderr_tail(workdir: Path, w: Worker, n: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return (workdir / f"{w.name}.stderr").read_text()[-n:]
    return ""


@contextlib.contextmanager
def workdir(tag: str) -> Iterator[Path]:
    """A scratch directory for one scenario; kept (and printed) only if the test fails."""
    path = Path(tempfile.mkdtemp(prefix=f"ps-fault-{tag}-", dir="/tmp"))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if ok and not os.environ.get("PARTSTREAM_KEEP_FAULT_LOGS"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"fault logs kept in {path}")
