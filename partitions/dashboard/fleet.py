"""The demo's consumer fleet: real OS processes that can be added, stopped, killed and paused.

Each member is ``python -m partitions.dashboard.worker`` running a :class:`~partitions.Consumer`
in its own process. The fleet keeps every child by pid and ends them all on :meth:`stop_all`.
Workers report what they processed through a small JSON status file each (in the fleet's
runtime directory) and read fault-injection instructions ("fail the next K records of tenant
X") from ``control.json`` there; neither touches partstream's keys.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Worker:
    """One consumer process of the fleet."""

    worker_id: str
    group: str
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)
    paused: bool = False
    state: str = "running"  # running, paused, stopping, stopped, killed, exited

    @property
    def pid(self) -> int:
        return self.proc.pid


class Fleet:
    """Starts and controls consumer worker processes. Thread-safe."""

    def __init__(
        self,
        url: str,
        namespace: str,
        topic: str,
        *,
        runtime_dir: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.topic = topic
        self.runtime = runtime_dir or Path(tempfile.mkdtemp(prefix="partstream-fleet-"))
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir or self.runtime
        self._workers: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    def add(self, group: str) -> Worker:
        """Start one more consumer process in ``group``."""
        with self._lock:
            worker_id = f"{group}-{next(self._ids)}"
            log = open(self.log_dir / f"{worker_id}.log", "ab")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "partitions.dashboard.worker",
                    "--url",
                    self.url,
                    "--namespace",
                    self.namespace,
                    "--topic",
                    self.topic,
                    "--group",
                    group,
                    "--worker-id",
                    worker_id,
                    "--runtime",
                    str(self.runtime),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            worker = Worker(worker_id, group, proc)
            self._workers[worker_id] = worker
            return worker

    def remove(self, worker_id: str) -> Worker:
        """Graceful stop: SIGTERM; the consumer commits, leaves the group and exits."""
        worker = self._get(worker_id)
        if worker.paused:
            self.resume(worker_id)
        self._signal(worker, signal.SIGTERM)
        worker.state = "stopping"
        return worker

    def kill(self, worker_id: str) -> Worker:
        """SIGKILL: the process dies mid-batch; the group notices after the session timeout."""
        worker = self._get(worker_id)
        self._signal(worker, signal.SIGKILL)
        worker.state = "killed"
        return worker

    def pause(self, worker_id: str) -> Worker:
        """SIGSTOP: the process freezes (no heartbeats); past its session it is fenced."""
        worker = self._get(worker_id)
        self._signal(worker, signal.SIGSTOP)
        worker.paused, worker.state = True, "paused"
        return worker

    def resume(self, worker_id: str) -> Worker:
        worker = self._get(worker_id)
        self._signal(worker, signal.SIGCONT)
        worker.paused, worker.state = False, "running"
        return worker

    def stop_all(self, timeout: float = 10.0) -> None:
        """End every worker: SIGCONT + SIGTERM, then SIGKILL whatever is left; reap all."""
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
                    os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                w.proc.wait()

    # -- fault injection ------------------------------------------------------------------
    def fail_next(self, tenant: str, count: int) -> None:
        """Make the workers fail the next ``count`` records of ``tenant`` (to show DLQ)."""
        path = self.runtime / "control.json"
        with self._lock:
            data = _read_json(path) or {}
            fail = data.setdefault("fail", {})
            fail[tenant] = int(fail.get(tenant, 0)) + count
            data["version"] = int(data.get("version", 0)) + 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)

    # -- status ---------------------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        """Every worker with its process state and what it reported."""
        out = []
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            code = w.proc.poll()
            if code is not None and w.state in ("running", "stopping", "paused"):
                w.state = "stopped" if w.state == "stopping" or code == 0 else "exited"
            report = _read_json(self.runtime / f"{w.worker_id}.json") or {}
            out.append(
                {
                    "worker_id": w.worker_id,
                    "group": w.group,
                    "pid": w.pid,
                    "state": w.state,
                    "exit_code": code,
                    "member_id": report.get("member_id"),
                    "processed": report.get("processed", 0),
                    "failed": report.get("failed", 0),
                    "out_of_order": report.get("out_of_order", 0),
                    "redelivered": report.get("redelivered", 0),
                    "partitions": report.get("partitions", []),
                    "last": report.get("last"),
                    "updated": report.get("updated"),
                }
            )
        return out

    def _get(self, worker_id: str) -> Worker:
        with self._lock:
            try:
                return self._workers[worker_id]
            except KeyError:
                raise KeyError(f"no worker {worker_id}") from None

    @staticmethod
    def _signal(worker: Worker, sig: int) -> None:
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
