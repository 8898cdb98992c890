"""The pytest plugin: a real server per test session and a namespace of its own per test.

Installed with partstream and loaded by pytest through the ``pytest11`` entry point named
``partstream`` (``-p no:partstream`` turns it off). It starts nothing until a test asks
for one of its fixtures:

``partstream_url`` (session)
    ``$PARTSTREAM_TEST_URL`` when set (any server URL partstream accepts), else a private
    embedded Valkey started in a temporary directory for this session and stopped, by pid,
    at its end.
``partstream_namespace``
    A fresh namespace name for this test.
``partstream_config``
    A :class:`~partitions.ClientConfig` for that server and namespace.
``partstream_conn``
    A :class:`~partitions.Connection` with that config; every key of the namespace is
    deleted after the test (SCAN and UNLINK, never FLUSHALL), so tests can share a server,
    run in parallel, and never see each other's topics or groups.

A server that cannot be started or reached skips the test, unless the environment sets
``CI`` (to anything non-empty): there a missing server must fail, not hide the tests.
:mod:`partitions.testing` has the helpers to use with these (create a topic, produce,
drain, wait for a condition).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from partitions import ClientConfig, Connection, EmbeddedServer, connect
from partitions.testing import drop_namespace, new_namespace

URL_ENV = "PARTSTREAM_TEST_URL"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test locally; fail it when ``$CI`` is set, so CI never passes by skipping."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def partstream_url() -> Iterator[str]:
    """The session's server: ``$PARTSTREAM_TEST_URL``, else a private embedded Valkey."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    # A short path under /tmp: the server listens on a unix socket inside it.
    data_dir = Path(tempfile.mkdtemp(prefix="ps-test-", dir="/tmp"))
    server = EmbeddedServer(data_dir)
    try:
        url = server.ensure_running()
    except Exception as err:
        shutil.rmtree(data_dir, ignore_errors=True)
        skip_or_fail(f"no server for partstream tests: {err}")
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def partstream_namespace() -> str:
    """A namespace of this test's own."""
    return new_namespace()


@pytest.fixture
def partstream_config(partstream_url: str, partstream_namespace: str) -> ClientConfig:
    """Client settings for the session's server in this test's namespace."""
    return ClientConfig(url=partstream_url, namespace=partstream_namespace)


@pytest.fixture
def partstream_conn(partstream_config: ClientConfig) -> Iterator[Connection]:
    """A connection in this test's namespace; the namespace's keys are dropped afterwards."""
    try:
        conn = connect(partstream_config)
    except Exception as err:
        skip_or_fail(f"partstream test server unreachable: {err}")
    try:
        yield conn
    finally:
        try:
            drop_namespace(conn)
        finally:
            conn.close()
