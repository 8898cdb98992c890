"""The benchmarks use the same server as the test suite, through the partstream pytest plugin
(partitions/pytest_plugin.py): $PARTSTREAM_TEST_URL, else a private embedded Valkey started for
the session and stopped (by pid) at its end."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_url(partstream_url: str) -> str:
    return partstream_url
