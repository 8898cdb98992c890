"""``partstream demo`` stops everything it started (the README's promise for command 1).

The demo runs as a process on an embedded server in a fresh data directory; Ctrl-C (SIGINT
to the whole process group, as a terminal sends it) or SIGTERM must end the dashboard, every
consumer process and the embedded server the demo started, and leave alone a server that was
already running. Every process is also killed by pid at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from partitions._client.server import EmbeddedServer, pid_alive
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]


def _workers(base: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(base + "api/state", timeout=5) as res:
        return list(orjson.loads(res.read())["workers"])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # A short path: the embedded server's unix socket lives inside it (107 bytes at most).
    with tempfile.TemporaryDirectory(prefix="ps-demo-", dir="/tmp") as d:
        yield Path(d)
        EmbeddedServer(d).stop()  # in case the test failed before the demo stopped it


def _run_demo(data_dir: Path, stop: str) -> tuple[int | None, list[int], str]:
    """Run the demo until its three consumers are up, stop it the way ``stop`` says; return
    (the embedded server's pid while it ran, the consumer pids, what the demo printed)."""
    port = free_port()
    env = {**os.environ, "PARTSTREAM_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("PARTSTREAM_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "partitions", "demo", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    pids: list[int] = []
    try:
        wait_until(lambda: len(_workers(base)) == 3, 60, "the demo's three consumers")
        pids = [int(str(w["pid"])) for w in _workers(base)]
        server_pid = EmbeddedServer(data_dir).pid()
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(45)
        assert proc.stdout is not None
        return server_pid, pids, proc.stdout.read().decode(errors="replace")
    finally:
        for pid in [proc.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_demo_stops_the_consumers_and_the_embedded_server_it_started(
    data_dir: Path, stop: str
) -> None:
    assert not EmbeddedServer(data_dir).is_running()
    server_pid, pids, printed = _run_demo(data_dir, stop)
    assert server_pid is not None
    # Its banner says so, and it said what it stopped.
    assert "Ctrl-C stops it and every consumer it started and the embedded server" in printed
    assert "Stopping the embedded server it started" in printed
    # The demo has exited: nothing it started may outlive it (a moment for the kernel to reap).
    wait_until(lambda: not any(pid_alive(p) for p in [server_pid, *pids]), 10, "no survivors")
    assert not EmbeddedServer(data_dir).is_running()


def test_demo_leaves_a_server_it_did_not_start_running(data_dir: Path) -> None:
    server = EmbeddedServer(data_dir)
    server.ensure_running()
    before = server.pid()
    try:
        server_pid, pids, printed = _run_demo(data_dir, "sigterm")
        assert server_pid == before
        assert "Ctrl-C stops it and every consumer it started)" in printed
        wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "the consumers to exit")
        assert server.is_running() and server.pid() == before
    finally:
        server.stop()
