"""Fixtures of the asyncio integration tests: anyio's pytest plugin on the asyncio backend,
and an AsyncConnection beside the sync ``conn`` (same server, same namespace)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from partitions import AsyncConnection, ClientConfig, connect_async
from partitions._base.errors import ConnectionFailedError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aconn(client_config: ClientConfig) -> AsyncIterator[AsyncConnection]:
    try:
        c = await connect_async(client_config)
    except ConnectionFailedError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"server unreachable: {err}")
    try:
        yield c
    finally:
        await c.aclose()
