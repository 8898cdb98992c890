"""Commands routed to the node that serves a key, with cluster redirections handled.

On a single server these are plain calls. On a cluster each command goes to the primary that
serves its key's slot, and the replies that a resharding or failover produces are handled
here, with a bounded number of attempts:

* ``MOVED``: the slot has a new owner for good; the client's slot map is updated from the
  reply (``move_slot``) and the command is sent to the new owner.
* ``ASK``: the slot is being migrated and this key already left; the command is sent once to
  the importing node, preceded by ``ASKING`` on the same connection.
* ``TRYAGAIN`` (a multi-key command whose keys are split by a migration in progress),
  ``CLUSTERDOWN`` and a broken connection: wait a little, refresh the slot map, try again.

Commands may use a bytes name (``b"XRANGE"``) to get redis-py's raw reply (no parsing); the
node clients are plain ``redis.Redis`` objects, which allow that (``RedisCluster`` does not).
Only idempotent reads, or writes whose retry is harmless, belong here: a command that timed
out is sent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis.exceptions as rex

from partitions._base.errors import ConnectionFailedError, translate
from partitions._base.functions import FAILOVER_GRACE_S
from partitions._client.connection import Connection

MAX_ATTEMPTS = 10
_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 0.5
_RETRY_PREFIXES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN")


def primaries(conn: Connection) -> list[Any]:
    """A plain client per primary node (the one client on a single server)."""
    client = conn.client
    if not conn.is_cluster:
        return [client]
    return [client.get_redis_connection(n) for n in client.get_primaries()]


def node_for_key(conn: Connection, key: str | bytes) -> Any:
    """The plain client of the primary serving ``key`` (the one client on a single server)."""
    client = conn.client
    if not conn.is_cluster:
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def node_name(conn: Connection, key: str | bytes) -> str | None:
    """``host:port`` of the primary serving ``key`` (None on a single server)."""
    if not conn.is_cluster:
        return None
    node = conn.client.get_node_from_key(key)
    return f"{node.host}:{node.port}"


def redirect_plan(err: BaseException) -> str:
    """What a cluster reply teaches (the one MOVED/ASK policy, for both shells): ``"moved"``
    (update the slot map from the reply: the slot has a new owner for good), ``"ask"`` (the
    move is not finished: send this one command to the named node, after ``ASKING``) or
    ``"refresh"`` (TRYAGAIN, CLUSTERDOWN, a lost node: re-read the whole map)."""
    if isinstance(err, rex.MovedError):  # (a subclass of AskError in redis-py)
        return "moved"
    if isinstance(err, rex.AskError):
        return "ask"
    return "refresh"


def redirect(conn: Connection, err: BaseException) -> Any:
    """Learn from a cluster redirection (:func:`redirect_plan`). Returns the ASK target's
    client, else None."""
    client = conn.client
    try:
        plan = redirect_plan(err)
        if plan == "moved":
            client.nodes_manager.move_slot(err)
        elif plan == "ask":
            assert isinstance(err, rex.AskError)
            node = client.get_node(host=err.host, port=err.port)
            if node is None:
                client.nodes_manager.initialize()
                node = client.get_node(host=err.host, port=err.port)
            return None if node is None else client.get_redis_connection(node)
        else:
            client.nodes_manager.initialize()
    except (rex.RedisError, rex.RedisClusterException):
        pass  # the cluster is unreachable right now: the next attempt fails and counts
    return None


async def aredirect(client: Any, err: BaseException) -> Any:
    """:func:`redirect` on a ``redis.asyncio`` cluster client: the ASK target's
    ``ClusterNode``, else None."""
    try:
        plan = redirect_plan(err)
        if plan == "moved":
            await client.nodes_manager.move_slot(err)
        elif plan == "ask":
            assert isinstance(err, rex.AskError)
            node = client.get_node(host=err.host, port=err.port)
            if node is None:
                await client.nodes_manager.initialize()
                node = client.get_node(host=err.host, port=err.port)
            return node
        else:
            await client.nodes_manager.initialize()
    except (rex.RedisError, rex.RedisClusterException):
        pass  # unreachable right now: the next attempt fails and counts
    return None


def group_by_node(
    items: Sequence[Any], node_of: Callable[[Any], Any]
) -> list[tuple[Any, list[Any]]]:
    """``items`` grouped by the node ``node_of(item)`` names, in first-seen order."""
    groups: dict[int, tuple[Any, list[Any]]] = {}
    for item in items:
        node = node_of(item)
        entry = groups.get(id(node))
        if entry is None:
            entry = groups[id(node)] = (node, [])
        entry[1].append(item)
    return list(groups.values())


# What a resharding or failover answers. redis-py strips the code from these errors'
# messages (a TryAgainError reads "Multiple keys request during rehashing of slot"), so they
# are told apart by class; MovedError is a subclass of AskError.
_REDIRECTS = (
    rex.AskError,
    rex.TryAgainError,
    rex.ClusterDownError,
    rex.ReadOnlyError,
    rex.MasterDownError,
)


def is_redirect(err: BaseException) -> bool:
    """MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY or MASTERDOWN: the cluster is moving."""
    return isinstance(err, _REDIRECTS) or str(err).startswith(_RETRY_PREFIXES)


class Topology(Protocol):
    """What the retry policy needs to know of a connection (sync or asyncio)."""

    @property
    def is_cluster(self) -> bool: ...

    behind_sentinel: bool


def cluster_retriable(err: BaseException) -> bool:
    """:func:`retriable` on a cluster: a redirection or a lost node."""
    return is_redirect(err) or isinstance(err, rex.ConnectionError | rex.TimeoutError)


def retriable(conn: Topology, err: BaseException) -> bool:
    """Whether a command that failed with ``err`` may go again after the map is refreshed
    (:func:`redirect`): on a cluster a redirection or a lost node, behind Sentinels a lost
    primary; never on a single server (its errors are the caller's to judge)."""
    if conn.is_cluster:
        return cluster_retriable(err)
    if conn.behind_sentinel:  # the primary is being replaced: reconnecting finds the new one
        return isinstance(err, rex.ConnectionError | rex.TimeoutError | rex.ReadOnlyError)
    return False


def _asking(node: Any, args: Sequence[Any]) -> Any:
    pipe = node.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*args)
    replies = pipe.execute(raise_on_error=False)
    if isinstance(replies[1], Exception):
        raise replies[1]
    return replies[1]


def execute_on_key(conn: Connection, key: str | bytes, *args: Any, context: str = "") -> Any:
    """Run ``args`` (a command naming ``key``) on the node serving ``key``.

    Redirections are followed for at least :data:`MAX_ATTEMPTS` attempts, and a node that is
    down (a cluster or a Sentinel set failing over) is waited for up to
    :data:`~partitions._base.functions.FAILOVER_GRACE_S`; errors come out translated into
    partstream's tree.
    """
    ask_node = None
    deadline = time.monotonic() + FAILOVER_GRACE_S
    attempt = 0
    while True:
        attempt += 1
        try:
            if ask_node is not None:
                return _asking(ask_node, args)
            return node_for_key(conn, key).execute_command(*args)
        except (rex.RedisError, rex.RedisClusterException) as err:
            # MOVED/ASK loops are capped by attempts; an unreachable or failing-over node
            # (connection refused, CLUSTERDOWN, TRYAGAIN) by the failover grace.
            moving = isinstance(err, rex.AskError)  # MovedError is an AskError
            given_up = (
                attempt >= MAX_ATTEMPTS if moving else attempt >= 2 and time.monotonic() > deadline
            )
            if given_up or not retriable(conn, err):
                if isinstance(err, rex.RedisClusterException):
                    raise ConnectionFailedError(f"{context or args[0]!r}: {err}") from err
                raise translate(err, context or f"running {args[0]!r} on {key!r}") from err
            ask_node = redirect(conn, err) if conn.is_cluster else None
            if ask_node is None and not isinstance(err, rex.MovedError):
                time.sleep(min(_BACKOFF_S * attempt, _MAX_BACKOFF_S))


def execute_per_key(
    conn: Connection, commands: Sequence[tuple[str | bytes, Sequence[Any]]], context: str = ""
) -> list[Any]:
    """Run many single-key commands, one pipeline per node; replies in the given order.

    Each item is ``(key, args)``. A command that meets a redirection is then run alone with
    :func:`execute_on_key`. Server errors other than redirections are returned in place of
    the reply (like ``raise_on_error=False``), already translated.
    """
    groups = group_by_node(range(len(commands)), lambda i: node_for_key(conn, commands[i][0]))
    out: list[Any] = [None] * len(commands)
    for node, indexes in groups:
        pipe = node.pipeline(transaction=False)
        for i in indexes:
            pipe.execute_command(*commands[i][1])
        try:
            replies = pipe.execute(raise_on_error=False)
        except rex.RedisError as err:
            if not retriable(conn, err):
                raise translate(err, context) from err
            redirect(conn, err)
            replies = [err] * len(indexes)
        for i, reply in zip(indexes, replies, strict=True):
            if isinstance(reply, Exception) and retriable(conn, reply):
                key, args = commands[i]
                try:
                    reply = execute_on_key(conn, key, *args, context=context)
                except Exception as err:  # returned in place, like the others
                    reply = err
            elif isinstance(reply, rex.RedisError):
                reply = translate(reply, context)
            out[i] = reply
    return out
