"""Shared fixtures.

Integration tests run against ``PARTSTREAM_TEST_URL`` when set (CI runs the suite once on
the machine's Redis 7 that way), else against a private embedded Valkey started for this test
session in a temporary data directory and stopped, by pid, at the end. Each test gets its own
key namespace, so tests never see each other's keys and nothing is flushed.

A server that cannot be reached skips integration tests locally and fails them under CI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect
from partitions._client.server import EmbeddedServer


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("PARTSTREAM_TEST_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ps-test-", dir="/tmp"))
    server = EmbeddedServer(data_dir)
    try:
        url = server.ensure_running()
    except Exception as err:
        shutil.rmtree(data_dir, ignore_errors=True)
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no server for integration tests: {err}")
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def client_config(server_url: str, namespace: str) -> ClientConfig:
    return ClientConfig(url=server_url, namespace=namespace)


@pytest.fixture
def conn(client_config: ClientConfig) -> Iterator[Connection]:
    try:
        c = connect(client_config)
    except Exception as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"server unreachable: {err}")
    try:
        yield c
    finally:
        # Drop this test's keys so a long-lived server does not fill up.
        try:
            drop_namespace(c, client_config.namespace)
        finally:
            c.close()


def drop_namespace(c: Connection, namespace: str) -> None:
    """Delete every key of ``namespace``: SCAN each primary, DEL key by key (one slot each)."""
    pattern = f"{namespace}:*"
    nodes = (
        [c.client.get_redis_connection(n) for n in c.client.get_primaries()]
        if c.is_cluster
        else [c.client]
    )
    for node in nodes:
        batch = [key for key in node.scan_iter(match=pattern, count=1000)]
        for key in batch:
            c.client.delete(key)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs (and starts) a local Redis Cluster; the cluster CI run"
    )
