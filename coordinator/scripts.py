"""Server-side Lua scripts: loaded once per server, called by SHA, reloaded after a restart.

Every script lives in ``coordinator/scripts/<name>.lua``, headed by the keys and arguments it
takes. :class:`Scripts` hides ``NOSCRIPT`` (the server restarted, failed over to a replica
that never loaded it, or ran SCRIPT FLUSH): the script is loaded again and the call retried
once, transparently. With a :class:`~coordinator.durability.Durability` that waits, the call
is pipelined with ``WAIT``/``WAITAOF`` on the same connection, and returns only once enough
replicas confirmed what it wrote (else NotEnoughReplicasError).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions as rex

from coordinator.durability import Durability
from coordinator.errors import translate

# Longest WAIT after a script unless the caller says: under the default socket timeout.
DEFAULT_WAIT_MS = 5000


@cache
def source(name: str) -> bytes:
    """The text of ``scripts/<name>.lua``."""
    return resources.files("coordinator").joinpath("scripts", f"{name}.lua").read_bytes()


@cache
def sha(name: str) -> str:
    """SHA1 of a script, as EVALSHA wants it (computed locally: no round trip)."""
    return hashlib.sha1(source(name)).hexdigest()


def is_noscript(err: BaseException) -> bool:
    return isinstance(err, rex.NoScriptError) or str(err).startswith("NOSCRIPT")


class Scripts:
    """Calls named scripts on one client (``redis.Redis`` or ``RedisCluster``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def load(self, name: str, target: Any = None) -> None:
        """SCRIPT LOAD one script (on ``target`` if given: a node client or a connection)."""
        (target or self._client).script_load(source(name))

    def call(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        context: str = "",
        *,
        durability: Durability | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
    ) -> Any:
        """EVALSHA ``name``; on NOSCRIPT load it and retry once. Errors are translated.

        ``durability`` (if it waits): WAIT up to ``wait_ms`` for the replicas it names.
        """
        if durability is not None and durability.waits:
            return self._call_durable(
                name, keys, args, context or f"script {name}", durability, wait_ms
            )
        digest = sha(name)
        try:
            try:
                return self._client.evalsha(digest, len(keys), *keys, *args)
            except rex.ResponseError as err:
                if not is_noscript(err):
                    raise
                return self._client.eval(source(name), len(keys), *keys, *args)
        except rex.RedisError as err:
            raise translate(err, context or f"script {name}") from err

    def _call_durable(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        context: str,
        durability: Durability,
        wait_ms: int,
    ) -> Any:
        # WAIT counts what its own connection wrote: one pipeline on the node of the keys.
        node = self._client
        if hasattr(node, "get_node_from_key"):  # a RedisCluster: the plain client of the slot
            node = node.get_redis_connection(node.get_node_from_key(keys[0]))
        waits = durability.commands(wait_ms)
        for attempt in (0, 1):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(sha(name), len(keys), *keys, *args)
            for cmd in waits:
                pipe.execute_command(*cmd)
            try:
                replies = pipe.execute(raise_on_error=False)
            except rex.RedisError as err:
                raise translate(err, context) from err
            first = replies[0]
            if isinstance(first, Exception):
                if attempt == 0 and is_noscript(first):
                    try:
                        node.script_load(source(name))
                    except rex.RedisError as err:
                        raise translate(err, context) from err
                    continue
                raise translate(first, context) from first
            durability.check(replies[1:], context)
            return first
        raise AssertionError("unreachable")  # pragma: no cover
