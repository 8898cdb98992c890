"""The benchmarks use the test suite's server: $PARTSTREAM_TEST_URL, else a private embedded
Valkey started for the session and stopped (by pid) at its end."""

from __future__ import annotations

from tests.conftest import server_url

__all__ = ["server_url"]
