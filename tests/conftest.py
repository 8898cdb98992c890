"""Shared fixtures: the short names the suite uses for the partstream pytest plugin's fixtures
(partitions/pytest_plugin.py), which users get for their own tests the same way.

Integration tests run against ``PARTSTREAM_TEST_URL`` when set (CI runs the suite once on
the machine's Redis 7 that way), else against a private embedded Valkey started for this test
session in a temporary data directory and stopped, by pid, at the end. Each test gets its own
key namespace, so tests never see each other's keys and nothing is flushed.

A server that cannot be reached skips integration tests locally and fails them under CI.
"""

from __future__ import annotations

import pytest

from partitions._client.config import ClientConfig
from partitions._client.connection import Connection


@pytest.fixture(scope="session")
def server_url(partstream_url: str) -> str:
    return partstream_url


@pytest.fixture
def namespace(partstream_namespace: str) -> str:
    return partstream_namespace


@pytest.fixture
def client_config(partstream_config: ClientConfig) -> ClientConfig:
    return partstream_config


@pytest.fixture
def conn(partstream_conn: Connection) -> Connection:
    return partstream_conn


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs (and starts) a local Redis Cluster; the cluster CI run"
    )
