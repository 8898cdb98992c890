"""The asyncio shell of connecting: :func:`connect_async` and :class:`AsyncConnection`.

Everything decided about a connection is decided once, in :mod:`partitions._client.connection`
(which client a URL needs and with which TLS settings, how the server is detected and which
servers are refused, how errors are worded) and :mod:`partitions._base.functions` (when a call
that did not run is tried again, when the library is loaded, what a failed call raises). This
module only sends what those decide, on ``redis.asyncio``, and sleeps with ``asyncio.sleep``.
The embedded server is started in a thread, so the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from partitions._base.aiofunctions import AsyncFunctions, initialize
from partitions._base.functions import (
    Refresh,
    Send,
)
from partitions._base.steps import Pause, adrive, dispatch
from partitions._client.config import ClientConfig
from partitions._client.connection import (
    OnNode,
    Opened,
    Primaries,
    ServerInfo,
    check_eviction_policy,
    client_plan,
    connect_failure,
    connect_steps,
    failover_window,
    resolve_config,
    resolve_url,
    sentinel_manager,
)

log = logging.getLogger("partstream")


def perform(client: Any) -> Callable[[Any], Awaitable[Any]]:
    """How a redis.asyncio client does the actions of connecting."""
    return dispatch(
        {
            Send: lambda a: client.execute_command(*a.command),
            # A ClusterNode answers for itself, unmerged.
            OnNode: lambda a: a.node.execute_command(*a.command),
            Primaries: lambda a: _now(client.get_primaries()),
            Refresh: lambda a: initialize(client),
            Pause: lambda a: asyncio.sleep(a.seconds),
        }
    )


async def _now(value: Any) -> Any:
    return value


def open_async_client(url: str, config: ClientConfig) -> tuple[Any, bool]:
    """A redis.asyncio client for ``url`` from the same plan as the sync one: (client,
    is_cluster). Nothing is sent yet."""
    plan = client_plan(url, config)
    if plan.cluster is not None:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in plan.cluster.nodes]
        return RedisCluster(startup_nodes=nodes, **plan.kwargs), True
    if plan.sentinel is not None:
        from redis.asyncio.sentinel import Sentinel

        target = plan.sentinel
        manager = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=plan.sentinel_kwargs, **plan.kwargs
        )
        client = manager.master_for(
            target.master, db=target.db, username=target.username, password=target.password
        )
        return client, False
    return aioredis.Redis.from_url(url, **plan.kwargs), False


async def close_async_client(client: Any) -> None:
    """Close a client from :func:`open_async_client` (and the Sentinel clients behind it)."""
    if client is None:
        return
    manager = sentinel_manager(client)
    for closable in [client, *(manager.sentinels if manager is not None else [])]:
        try:
            await closable.aclose()
        except Exception:
            log.debug("error while closing a client", exc_info=True)


async def connect_async(config: ClientConfig | None = None, **overrides: Any) -> AsyncConnection:
    """:func:`partitions.connect` for asyncio: open the configured server (or the embedded
    one, started in a thread) with a ``redis.asyncio`` client, and check it the same way.

    ``overrides`` are ClientConfig fields (``url=...``, ``namespace=...``) applied over
    ``config`` (default: from the environment). Use it as ``async with await
    connect_async() as conn`` or close it with ``await conn.aclose()``.
    """
    config = resolve_config(config, overrides)
    url = config.url if config.url is not None else await asyncio.to_thread(resolve_url, config)
    client: Any = None
    try:
        client, cluster = open_async_client(url, config)
        steps = connect_steps(cluster=cluster, failover_window=failover_window(client))
        server = await adrive(steps, perform(client))
        check_eviction_policy(server, config.strict_eviction_policy)
    except Exception as err:
        await close_async_client(client)
        failure = connect_failure(err, url)
        if failure is None:
            raise
        raise failure from err
    except BaseException:  # cancelled: the client must not outlive the task
        await close_async_client(client)
        raise
    return AsyncConnection(client, config, url, server)


class AsyncConnection(Opened):
    """An open server for asyncio code: the ``redis.asyncio`` client, its key names,
    server-side functions and detected features (as :class:`partitions.Connection`).

    Safe to share between the tasks of one event loop (the client keeps a connection pool);
    not between event loops or threads.
    """

    def __init__(self, client: Any, config: ClientConfig, url: str, server: ServerInfo) -> None:
        super().__init__(client, config, url, server)
        self.functions = AsyncFunctions(client)

    async def aclose(self) -> None:
        await self.functions.aclose()
        await close_async_client(self.client)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
