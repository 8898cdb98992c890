"""The whole check, as CI runs it: ``python -m tests``.

1. ruff (lint + format check) and mypy --strict on the packages;
2. unit tests (no server);
3. integration tests on the embedded Valkey (started privately for the run);
   then the cluster-ready integration modules on a local 3-master Valkey Cluster that the
   runner starts and stops (by pid) itself, and again on one with a replica per master
   while a primary is killed -9 mid-run and its replica promoted (PARTSTREAM_CI_FAILOVER=0
   leaves that pass out);
4. integration tests on the Redis at $PARTSTREAM_REDIS_URL (default redis://127.0.0.1:6379),
   skipped locally when it is unreachable, required under CI;
5. fault tests (they start their own servers) and the benchmark harness smoke test.

Prints one summary line at the end ('N passed, N failed') and exits non-zero on any failure.

``python -m tests --failover-only [--runs N] [--after S ...]`` runs only the failover pass,
N times (the kill S seconds into each run, cycling through the values given), and prints
one line per run: how steady the modules are through a failover.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests import running_test
from tests.integration.cluster_slots import migration_lock

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CI = bool(os.environ.get("CI"))


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            return True
    except OSError:
        return False


# The "FAILED ..." / "ERROR ..." lines of pytest's short summaries (with -rfE), in order.
FAILURES: list[str] = []


def run(label: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """Run one step; returns (passed, failed, skipped) counted from pytest's summary."""
    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    sys.stdout.write(proc.stdout)
    took = time.monotonic() - start
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "errors")}
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    FAILURES.extend(
        line for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))
    )
    if cmd[:3] == [PY, "-m", "pytest"]:
        for num, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail[0]):
            counts[word] += int(num)
        failed = counts["failed"] + counts["error"] + counts["errors"]
        if proc.returncode not in (0,) and failed == 0:
            failed = 1  # collection error, crash or no tests ran (exit 5)
        print(f"=== {label}: exit {proc.returncode} in {took:.0f}s", flush=True)
        return counts["passed"], failed, counts["skipped"]
    print(f"=== {label}: exit {proc.returncode} in {took:.0f}s", flush=True)
    return (1, 0, 0) if proc.returncode == 0 else (0, 1, 0)


# The integration modules that run on the local 3-master cluster too (about 110 s in all, and
# about 130 s again through the failover pass).
# A module joins once its code works on a cluster; test_cluster.py migrates slots live.
CLUSTER_READY = [
    "tests/integration/test_cluster.py",
    "tests/integration/test_data_plane.py",
    "tests/integration/test_cli_data.py",
    "tests/integration/test_walkthrough.py",
    "tests/integration/test_coordinator.py",
    "tests/integration/test_consumer.py",
    "tests/integration/test_cli_consumer.py",
    "tests/integration/test_consumer_processes.py",
    "tests/integration/test_reclaim.py",
    "tests/integration/test_group_delete.py",
    "tests/integration/test_group_model.py",
    "tests/integration/test_topic_growth.py",
    "tests/integration/test_topic_layout.py",
    "tests/integration/test_deliveries.py",
    "tests/integration/test_library.py",
    "tests/integration/test_async_connection.py",
    "tests/integration/test_async_member.py",
    "tests/integration/test_async_runner.py",
    "tests/integration/test_async_producer.py",
    "tests/integration/test_producer_multi.py",
    "tests/integration/test_async_consumer.py",
    "tests/integration/test_security_cluster.py",
    "tests/integration/test_metrics.py",
    "tests/integration/test_pipeline.py",
]


def run_on_cluster(
    pytest: list[str], *, failover: bool = False, after: float | None = None
) -> tuple[int, int, int]:
    """Start a 3-master cluster in a temporary directory, run CLUSTER_READY on it, stop it.

    ``failover``: each master has a replica, and while the modules run one primary is killed
    -9 (``after`` seconds into the run, default ``FAILOVER_AFTER_S``), its replica promoted,
    and the dead node started again (it comes back as a replica): the modules must pass
    through it.

    The nodes are stopped by pid (EmbeddedCluster.stop) whatever happens. A cluster that
    cannot start is a failure under CI and a note locally.
    """
    from partitions._client.cluster import EmbeddedCluster, free_base_port

    replicas = 1 if failover else 0
    label = "3-master cluster" + (", a primary killed mid-run" if failover else "")
    data_dir = Path(tempfile.mkdtemp(prefix="ps-ci-cluster-", dir="/tmp"))
    cluster = EmbeddedCluster(
        data_dir,
        masters=3,
        base_port=free_base_port(3 * (1 + replicas)),
        replicas=replicas,
        node_timeout_ms=2000,
    )
    killer = None
    try:
        try:
            url = cluster.ensure_running(timeout=90)
        except Exception as err:
            print(f"\n=== integration ({label}): cannot start a local cluster: {err}")
            return (0, 1, 0) if CI else (0, 0, 1)
        env = {"PARTSTREAM_TEST_URL": url, "PARTSTREAM_TEST_CLUSTER_DIR": str(data_dir)}
        files = [f for f in CLUSTER_READY if (ROOT / f).exists()]
        cmd = [*pytest, *files]
        if failover:
            # The test running at the kill is named in the report.
            env[running_test.ENV] = str(data_dir / "running-test")
            cmd = [*pytest, "-p", "tests.running_test", *files]
            killer = FailoverDuringRun(cluster, FAILOVER_AFTER_S if after is None else after)
            killer.start()
        counts = run(f"integration ({label})", cmd, env)
        if killer is not None:
            killer.join()
            print(f"=== integration ({label}): {killer.report}", flush=True)
            if not killer.done:
                counts = (counts[0], counts[1] + 1, counts[2])  # the fault never happened
        return counts
    finally:
        if killer is not None:
            killer.cancel()
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# Seconds into the failover run when one primary is killed: inside the first modules
# (test_cluster's resharding, the data plane); --failover-only --after moves it.
FAILOVER_AFTER_S = 20.0


class FailoverDuringRun(threading.Thread):
    """kill -9 one primary of ``cluster`` after ``after`` seconds, wait for its replica's
    promotion, start the dead node again (it rejoins as a replica) and wait until in sync."""

    def __init__(self, cluster: Any, after: float) -> None:
        super().__init__(name="failover-during-run", daemon=True)
        self.cluster, self.after = cluster, after
        self._cancel = threading.Event()
        self.done = False
        self.report = "no failover (the run ended first)"

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:
        if self._cancel.wait(self.after):
            return
        try:
            # Not in the middle of a test's slot migration (cluster_slots.migration_lock).
            with migration_lock(self.cluster):
                victim = self.cluster.primary_ports()[0]
                pid = self.cluster.pid(victim)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                during = running_test.running(self.cluster.data_dir / "running-test")
                while not self._cancel.is_set():
                    primaries = self.cluster.primary_ports()
                    if victim not in primaries and len(primaries) == 3:
                        break
                    time.sleep(0.1)
                promoted = time.monotonic() - t0
            self.cluster.ensure_running(timeout=120)
            self.done = True
            self.report = (
                f"primary on port {victim} killed -9 {self.after:.0f}s into the run (in {during}), "
                "its replica "
                f"promoted in {promoted:.1f}s, the node back as a replica "
                f"{time.monotonic() - t0:.1f}s after the kill"
            )
        except Exception as err:  # reported, and the run counts as failed
            self.report = f"the failover did not complete: {type(err).__name__}: {err}"


def failover_only(pytest: list[str], runs: int, offsets: list[float]) -> int:
    """Only the failover pass, ``runs`` times; one line per run, then the tally."""
    clean = 0
    lines = []
    for i in range(runs):
        after = offsets[i % len(offsets)]
        seen = len(FAILURES)
        passed, failed, _ = run_on_cluster(pytest, failover=True, after=after)
        clean += failed == 0 and passed > 0
        line = f"run {i + 1}: kill at {after:.0f}s: {passed} passed, {failed} failed"
        print(f"=== failover-only {line}", flush=True)
        lines += [line, *(f"    {f}" for f in FAILURES[seen:])]
    print("\n" + "\n".join(lines))
    print(f"\nfailover passes: {runs} run, {clean} clean")
    return 0 if clean == runs else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--failover-only", action="store_true", help="run only the cluster failover pass"
    )
    parser.add_argument("--runs", type=int, default=1, help="failover passes (--failover-only)")
    parser.add_argument(
        "--after",
        type=float,
        nargs="+",
        default=[FAILOVER_AFTER_S],
        help="seconds into a pass when the primary is killed, cycled over the runs",
    )
    args = parser.parse_args(argv)
    redis_url = os.environ.get("PARTSTREAM_REDIS_URL", "redis://127.0.0.1:6379")
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable"]
    if args.failover_only:
        return failover_only([*pytest, "-rfE"], max(1, args.runs), args.after)
    steps: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("ruff", [PY, "-m", "ruff", "check", "partitions", "coordinator", "tests", "bench"], None),
        ("ruff format", [PY, "-m", "ruff", "format", "--check", "partitions", "coordinator"], None),
        ("mypy", [PY, "-m", "mypy"], None),
        ("unit", [*pytest, "tests/unit"], None),
        (
            "integration (embedded valkey)",
            [*pytest, "-m", "not cluster", "tests/integration"],
            {"PARTSTREAM_TEST_URL": ""},
        ),
    ]
    if reachable(redis_url) or CI:
        steps.append(
            (
                "integration (redis 7)",
                [*pytest, "-m", "not cluster", "tests/integration"],
                {"PARTSTREAM_TEST_URL": redis_url},
            )
        )
    else:
        print(f"note: {redis_url} unreachable, skipping the Redis run (CI requires it)")
    if (ROOT / "tests" / "faults").exists() and any((ROOT / "tests" / "faults").glob("test_*.py")):
        steps.append(("faults", [*pytest, "tests/faults"], {"PARTSTREAM_TEST_URL": ""}))
    if any((ROOT / "bench").glob("test_*.py")):
        steps.append(("bench smoke", [*pytest, "bench"], {"PARTSTREAM_TEST_URL": ""}))
    # Anything that falls back to the default embedded server during the run gets a private
    # data directory, stopped and removed at the end: the run leaves no server behind.
    data_dir = Path(tempfile.mkdtemp(prefix="ps-ci-data-", dir="/tmp"))
    os.environ["PARTSTREAM_DATA_DIR"] = str(data_dir)
    passed = failed = skipped = 0
    try:
        for label, cmd, env in steps:
            p, f, s = run(label, cmd, env)
            passed, failed, skipped = passed + p, failed + f, skipped + s
            if label == "integration (embedded valkey)":
                # The cluster pass, then the same modules through a primary's failover: the
                # calls that land on the dead node in its seconds of failover ride it out
                # (partitions/_base/failover.py), so the pass is steady enough to gate CI.
                with_failover = os.environ.get("PARTSTREAM_CI_FAILOVER", "1") != "0"
                for failover in (False, True)[: 2 if with_failover else 1]:
                    p, f, s = run_on_cluster(pytest, failover=failover)
                    passed, failed, skipped = passed + p, failed + f, skipped + s
    finally:
        from partitions._client.server import EmbeddedServer

        if EmbeddedServer(data_dir).stop():
            print(f"note: stopped an embedded server left in {data_dir}")
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
