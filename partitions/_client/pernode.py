"""Single-slot commands run one pipeline per cluster node, written once as steps
(:mod:`partitions._base.steps`) for the threaded and the asyncio shells.

The steps decide which node gets which command, what a redirection means (the one policy of
:mod:`partitions._client.nodes`), when a round is tried again and when the library is loaded;
they yield three actions beside :class:`~partitions._base.steps.Pause`:

* :class:`NodeRound`: one pipeline to a node; the result is a reply per command, a server
  error in place (ASKING's own reply left out); a broken connection raises;
* :class:`Learn`: learn from a redirection (update or re-read the slot map); the result is
  the node an ``ASK`` names, else None;
* :class:`LoadOn`: load the Functions library on a node that lacks it.

:func:`perform_sync` does them with redis-py (a node is the plain client of
``RedisCluster.get_redis_connection``), :func:`perform_async` with ``redis.asyncio`` (a node is
a ``ClusterNode``; a round is one write with :func:`partitions._client.wire.aexchange`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import translate
from partitions._base.functions import is_missing
from partitions._base.steps import Pause, Steps, dispatch, drive
from partitions._client.connection import Connection
from partitions._client.nodes import (
    aredirect,
    cluster_retriable,
    group_by_node,
    is_redirect,
    node_for_key,
    redirect,
)
from partitions._client.wire import ASKING, CONNECTION_ERRORS, AsyncLink, aexchange, pack

Commands = Sequence[tuple[str | bytes, Sequence[Any]]]  # (key, command)


@dataclass(frozen=True, slots=True)
class NodeRound:
    """One pipeline to ``node``: each command, after ``ASKING`` where ``asking`` says."""

    node: Any
    commands: list[Sequence[Any]]
    asking: list[bool]


@dataclass(frozen=True, slots=True)
class Learn:
    """Learn from the redirection ``err``; the result is the ASK target node or None."""

    err: BaseException


@dataclass(frozen=True, slots=True)
class LoadOn:
    """Load the Functions library on ``node``."""

    node: Any


def per_node_steps(
    commands: Commands,
    node_of: Callable[[str | bytes], Any],
    *,
    load_missing: bool = False,
    attempts: int = 4,
) -> Steps[list[Any]]:
    """Run single-slot commands (FCALL included), one pipeline per node; replies in order.

    Nothing waits long: ``MOVED`` is followed at once, ``ASK`` by ``ASKING`` + the command on
    the importing node, ``TRYAGAIN`` and ``CLUSTERDOWN`` after a few ms, for at most
    ``attempts`` rounds. A command the cluster still cannot serve then (a slot mid-migration)
    keeps its redis-py error in place, never run: ``is_redirect`` tells it apart, and the
    caller simply tries again later. ``load_missing``: a function the node lacks gets the
    library loaded there, and the command is sent again. Other server errors stay in place,
    untranslated; a connection error raises, translated.
    """
    out: list[Any] = [None] * len(commands)
    todo: list[tuple[int, Any]] = [(i, None) for i in range(len(commands))]  # (index, ASK node)
    for attempt in range(1, attempts + 1):
        groups = group_by_node(
            todo, lambda item: node_of(commands[item[0]][0]) if item[1] is None else item[1]
        )
        todo = []
        wait = False
        for node, items in groups:
            calls = [commands[i][1] for i, _ in items]
            try:
                replies = yield NodeRound(node, calls, [ask is not None for _, ask in items])
            except rex.RedisError as err:
                if cluster_retriable(err):
                    yield Learn(err)
                raise translate(err, "running commands per node") from err
            loaded = False
            for (i, ask), reply in zip(items, replies, strict=True):
                out[i] = reply
                if not isinstance(reply, Exception) or attempt == attempts:
                    continue
                if load_missing and is_missing(reply):
                    if not loaded:
                        yield LoadOn(node)
                        loaded = True
                    todo.append((i, ask))
                elif is_redirect(reply):
                    todo.append((i, (yield Learn(reply))))
                    wait = wait or not isinstance(reply, rex.AskError)
        if not todo:
            break
        if wait:
            yield Pause(0.005 * attempt)
    return out


def on_nodes_steps(
    commands: Commands,
    node_of: Callable[[str | bytes], Any],
    what: str,
    waits: list[tuple[Any, ...]],
    durability: Durability,
) -> Steps[list[Any]]:
    """A consumer's single-slot calls on a cluster, one pipeline per node; a server error
    other than a redirection raises, translated.

    Without ``waits``: :func:`per_node_steps` (redirections followed). With them, each node's
    calls are followed by ``waits`` in the same pipeline (WAIT counts what its own connection
    wrote), then the confirmations are checked; a redirection stays in place (the call did
    not run); the library is loaded where missing, once."""
    if not waits:
        replies = yield from per_node_steps(commands, node_of, load_missing=True)
        for reply in replies:
            if isinstance(reply, Exception) and not is_redirect(reply):
                raise translate(reply, what) from reply
        return replies
    out: list[Any] = [None] * len(commands)
    for node, indexes in group_by_node(range(len(commands)), lambda i: node_of(commands[i][0])):
        calls = [commands[i][1] for i in indexes]
        sent = [*calls, *waits]
        for attempt in (0, 1):
            try:
                replies = yield NodeRound(node, sent, [False] * len(sent))
            except rex.RedisError as err:
                yield Learn(err)  # a node died or failed over: refresh the map
                raise translate(err, what) from err
            mine, confirms = replies[: len(calls)], replies[len(calls) :]
            if attempt == 0 and any(isinstance(r, Exception) and is_missing(r) for r in mine):
                yield LoadOn(node)
                continue
            break
        for i, reply in zip(indexes, mine, strict=True):
            if isinstance(reply, Exception):
                if not is_redirect(reply):
                    raise translate(reply, what) from reply
                yield Learn(reply)  # not run: the next call goes where it moved
            out[i] = reply
        if any(not isinstance(r, Exception) for r in mine):
            durability.check(confirms, what)
    return out


# -- the shells' actions --------------------------------------------------------------------
def perform_sync(conn: Connection, sleep: Callable[[float], None]) -> Callable[[Any], Any]:
    """How the threaded shell does the actions (nodes: plain redis-py clients)."""
    return dispatch(
        {
            NodeRound: _round_sync,
            Learn: lambda a: redirect(conn, a.err),
            LoadOn: lambda a: conn.functions.load(a.node),
            Pause: lambda a: sleep(a.seconds),
        }
    )


def sync_node_of(conn: Connection) -> Callable[[str | bytes], Any]:
    return lambda key: node_for_key(conn, key)


def pipeline_per_node(
    conn: Connection, commands: Commands, *, load_missing: bool = False, attempts: int = 4
) -> list[Any]:
    """:func:`per_node_steps`, blocking."""
    steps = per_node_steps(
        commands, sync_node_of(conn), load_missing=load_missing, attempts=attempts
    )
    replies: list[Any] = drive(steps, perform_sync(conn, time.sleep))
    return replies


def _round_sync(action: NodeRound) -> list[Any]:
    pipe = action.node.pipeline(transaction=False)
    for asking, command in zip(action.asking, action.commands, strict=True):
        if asking:
            pipe.execute_command("ASKING")
        pipe.execute_command(*command)
    return _without_asking(action.asking, pipe.execute(raise_on_error=False))


def _without_asking(asking: list[bool], replies: list[Any]) -> list[Any]:
    """The commands' replies, ASKING's own OKs left out."""
    it = iter(replies)
    out = []
    for ask in asking:
        if ask:
            next(it)
        out.append(next(it))
    return out


def perform_async(conn: Any, sleep: Callable[[float], Awaitable[None]]) -> Callable[[Any], Any]:
    """How the asyncio shell does the actions (``conn`` an AsyncConnection; nodes are
    ``ClusterNode`` objects of its ``RedisCluster``)."""
    return dispatch(
        {
            NodeRound: _round_async,
            Learn: lambda a: aredirect(conn.client, a.err),
            LoadOn: lambda a: conn.functions.load(a.node),
            Pause: lambda a: sleep(a.seconds),
        }
    )


def async_node_of(conn: Any) -> Callable[[str | bytes], Any]:
    client = conn.client
    return lambda key: client.get_node_from_key(key)


async def _round_async(action: NodeRound) -> list[Any]:
    payload: list[bytes] = []
    for asking, command in zip(action.asking, action.commands, strict=True):
        if asking:
            payload.append(ASKING)
        payload.append(pack(command))
    replies = await aexchange(AsyncLink(node=action.node), payload, len(payload))
    for reply in replies:
        # A broken connection raises, as a redis-py pipeline does.
        if isinstance(reply, CONNECTION_ERRORS):
            if isinstance(reply, rex.RedisError):
                raise reply
            raise rex.ConnectionError(f"connection lost ({reply})") from reply
    return _without_asking(action.asking, replies)
