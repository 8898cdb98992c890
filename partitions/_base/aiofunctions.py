"""The asyncio shell of :class:`partitions._base.functions.Functions`: the same calls, the
same load-where-missing, the same failover retry (the steps are that module's), awaited on a
``redis.asyncio`` client (``Redis`` or ``RedisCluster``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from partitions._base.durability import Durability
from partitions._base.functions import (
    DEFAULT_WAIT_MS,
    CallsFunctions,
    Invoke,
    Load,
    Pipeline,
    Refresh,
    Send,
    is_cluster_client,
    library_code,
    load_steps,
)
from partitions._base.steps import IO_ERRORS, Pause, Steps, T, adrive, dispatch


async def initialize(client: Any) -> None:
    """Re-learn a redis.asyncio cluster's slot map (errors swallowed: the next try says)."""
    with contextlib.suppress(*IO_ERRORS):
        await client.nodes_manager.initialize()


class AsyncFunctions(CallsFunctions):
    """:class:`partitions._base.functions.Functions` on a redis.asyncio client: the same
    calls, the same load-where-missing, the same failover retry (the steps are that
    module's), awaited.
    """

    def __init__(self, client: Any, *, retry_for: float | None = None) -> None:
        super().__init__(client, retry_for=retry_for)
        # Plain clients of single cluster nodes (a durable call's pipeline), by node name.
        self._nodes: dict[str, Any] = {}
        self.perform = dispatch(
            {
                Send: lambda a: client.execute_command(*a.command),
                Invoke: lambda a: a.fn(),
                Pipeline: self._pipeline,
                Load: lambda a: self._target(a).execute_command("FUNCTION", "LOAD", library_code()),
                Refresh: lambda a: initialize(client),
                Pause: lambda a: asyncio.sleep(a.seconds),
            }
        )

    async def run(self, steps: Steps[T]) -> T:
        """Run steps made of this module's actions (a call's, or a member's built on them)."""
        return await adrive(steps, self.perform)

    async def load(self, target: Any = None) -> bool:
        """FUNCTION LOAD this version's library (on ``target``: a cluster node or a client).

        True if it was loaded now, False if it was already there. LibraryMissingError if
        this user may not load it."""
        return await self.run(load_steps(Load(target=target)))

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
        steps = self._steps(name, keys, args, context, durability, wait_ms)
        return await self.run(steps)

    def _target(self, action: Load) -> Any:
        """Where to load: the caller's target, the key's ClusterNode, else the client."""
        if action.target is not None:
            return action.target
        if action.key is None or not is_cluster_client(self._client):
            return self._client
        return self._client.get_node_from_key(action.key)

    async def _pipeline(self, action: Pipeline) -> list[Any]:
        pipe = self._node_client(action.key).pipeline(transaction=False)
        for command in action.commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _node_client(self, key: str | None) -> Any:
        # The FCALL and its WAIT go down one connection to the key's node: a plain client
        # there (RedisCluster's pipeline would route the keyless WAIT elsewhere).
        if key is None or not is_cluster_client(self._client):
            return self._client
        node = self._client.get_node_from_key(key)
        client = self._nodes.get(node.name)
        if client is None:
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            client = self._nodes[node.name] = aioredis.Redis(connection_pool=pool)
        return client

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose(close_connection_pool=True)
