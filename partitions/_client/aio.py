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
import contextlib
import logging
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import translate
from partitions._base.functions import (
    DEFAULT_WAIT_MS,
    DURABLE_ATTEMPTS,
    FAILOVER_GRACE_S,
    Backoff,
    NotRun,
    call_failure,
    durable_commands,
    durable_retry,
    fails_over,
    fcall_command,
    gave_up,
    is_cluster_client,
    is_missing,
    library_code,
    load_failure,
)
from partitions._base.keys import Keys
from partitions._client.config import ClientConfig
from partitions._client.connection import (
    IO_ERRORS,
    PRIMARIES,
    REFRESH,
    Action,
    OnNode,
    Pause,
    ServerInfo,
    Stepper,
    Steps,
    check_eviction_policy,
    client_plan,
    connect_failure,
    connect_steps,
    failover_window,
    resolve_config,
    resolve_url,
    sentinel_manager,
)
from partitions._client.urls import redact_url

log = logging.getLogger("partstream")
T = TypeVar("T")


async def adrive(steps: Steps[T], client: Any) -> T:
    """Run ``steps`` (see :func:`partitions._client.connection.drive`) on a redis.asyncio
    client."""
    stepper = Stepper(steps)
    while not stepper.done:
        try:
            stepper.reply(await _perform(stepper.action, client))
        except IO_ERRORS as err:
            stepper.fail(err)
    return stepper.result()


async def _perform(action: Action, client: Any) -> Any:
    if isinstance(action, Pause):
        return await asyncio.sleep(action.seconds)
    if isinstance(action, OnNode):  # a ClusterNode answers for itself, unmerged
        return await action.node.execute_command(*action.command)
    if action == PRIMARIES:
        return client.get_primaries()
    if action == REFRESH:
        with contextlib.suppress(*IO_ERRORS):
            await client.nodes_manager.initialize()
        return None
    assert isinstance(action, tuple)
    return await client.execute_command(*action)


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
        server = await adrive(steps, client)
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


class AsyncConnection:
    """An open server for asyncio code: the ``redis.asyncio`` client, its key names,
    server-side functions and detected features.

    Safe to share between the tasks of one event loop (the client keeps a connection pool);
    not between event loops or threads.
    """

    def __init__(self, client: Any, config: ClientConfig, url: str, server: ServerInfo) -> None:
        self.client = client
        self.config = config
        self.url = url
        self.server = server
        self.keys = Keys(config.namespace)
        self.functions = AsyncFunctions(client)
        self.behind_sentinel = sentinel_manager(client) is not None

    @property
    def is_cluster(self) -> bool:
        return self.server.cluster

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

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

    def __repr__(self) -> str:
        return f"<AsyncConnection {self.redacted_url} {self.server.describe()}>"


class AsyncFunctions:
    """:class:`partitions._base.functions.Functions` on a redis.asyncio client: the same
    calls, the same load-where-missing, the same failover retry (the decisions are that
    module's), awaited.
    """

    def __init__(self, client: Any, *, retry_for: float | None = None) -> None:
        self._client = client
        if retry_for is None:
            retry_for = FAILOVER_GRACE_S if fails_over(client) else 0.0
        self.retry_for = retry_for
        # Plain clients for single cluster nodes (a durable call's pipeline), by node name.
        self._nodes: dict[str, Any] = {}

    async def load(self, node: Any = None) -> bool:
        """FUNCTION LOAD this version's library (on ``node``: a cluster node or a client).

        True if it was loaded now, False if it was already there. LibraryMissingError if
        this user may not load it."""
        try:
            await (node or self._client).execute_command("FUNCTION", "LOAD", library_code())
        except rex.RedisError as err:
            failure = load_failure(err)
            if failure is None:
                return False
            raise failure from err
        return True

    async def call(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        context: str = "",
        *,
        durability: Durability | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
    ) -> Any:
        """FCALL ``name`` (see :meth:`partitions._base.functions.Functions.call`)."""
        backoff = Backoff(self.retry_for)
        where = context or f"function {name}"
        while True:
            try:
                if durability is not None and durability.waits:
                    return await self._call_durable(name, keys, args, where, durability, wait_ms)
                return await self._call(name, keys, args, where)
            except NotRun as not_run:
                pause = backoff.next_pause()
                if pause is None:
                    raise gave_up(not_run, where) from not_run.__cause__
                await asyncio.sleep(pause)

    async def _call(self, name: str, keys: list[str], args: list[Any], where: str) -> Any:
        command = fcall_command(name, keys, args)
        try:
            try:
                return await self._client.execute_command(*command)
            except rex.ResponseError as err:
                if not is_missing(err):
                    raise
                await self.load(self._node_of(keys))
                return await self._client.execute_command(*command)
        except IO_ERRORS as err:
            raise call_failure(err, where, retrying=bool(self.retry_for)) from err

    async def _call_durable(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        where: str,
        durability: Durability,
        wait_ms: int,
    ) -> Any:
        cluster = bool(keys) and is_cluster_client(self._client)
        commands = durable_commands(name, keys, args, durability, wait_ms)
        loaded = False
        for attempt in range(1, DURABLE_ATTEMPTS + 1):
            node = self._node_client(keys[0]) if cluster else self._client
            pipe = node.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except rex.RedisError as err:
                if cluster:
                    await self._refresh_map()
                raise call_failure(err, where, retrying=bool(self.retry_for)) from err
            first = replies[0]
            if not isinstance(first, Exception):
                durability.check(replies[1:], where)
                return first
            action = durable_retry(first, attempt=attempt, loaded=loaded, cluster=cluster)
            if action is None:
                raise translate(first, where) from first
            loaded = loaded or action == "load"
            await (self.load(node) if action == "load" else self._refresh_map())
        raise AssertionError("unreachable")  # pragma: no cover

    def _node_of(self, keys: list[str]) -> Any:
        """The cluster node that holds ``keys`` (None off a cluster: the client itself)."""
        if not keys or not is_cluster_client(self._client):
            return None
        return self._client.get_node_from_key(keys[0])

    def _node_client(self, key: str) -> Any:
        # WAIT counts what its own connection wrote, so the FCALL and the WAIT go down one
        # connection to the key's node: a plain client there (RedisCluster's pipeline
        # would route the keyless WAIT elsewhere).
        node = self._client.get_node_from_key(key)
        client = self._nodes.get(node.name)
        if client is None:
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            client = self._nodes[node.name] = aioredis.Redis(connection_pool=pool)
        return client

    async def _refresh_map(self) -> None:
        with contextlib.suppress(*IO_ERRORS):
            await self._client.nodes_manager.initialize()

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose(close_connection_pool=True)
