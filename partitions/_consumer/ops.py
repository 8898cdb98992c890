"""The requests a consumer's steps yield to their shell (see :mod:`partitions._consumer.flow`),
the rebalance event queue both shells share, and the constants of their loops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from partitions._admin.topics import TopicSpec
from partitions._base.durability import Durability
from partitions._base.errors import (
    ConnectionFailedError,
    PartstreamError,
)
from partitions._base.keys import Layouts, TopicLayout
from partitions._base.steps import Pause, Steps
from partitions._base.types import Grant, TopicPartition
from partitions._client.pernode import per_node_steps

log = logging.getLogger("partstream.consumer")

# How long a topic's partition count is trusted: a topic that grows is picked up within it.
METADATA_MAX_AGE_S = 30.0
# Pause between attempts while the server is unreachable, inside one poll().
RECONNECT_PAUSE_S = 0.1
# A request whose outcome the consumer cannot know: it may have run on the server.
OUTCOME_UNKNOWN = (ConnectionFailedError, asyncio.CancelledError)


# -- the requests a step yields -------------------------------------------------------------
@dataclass(slots=True)
class Exchange:
    """Send ``commands`` in one write on the consumer's data connection, read a reply per
    command (a server error stands in place). Sent once, never re-sent behind the caller's
    back. ``bulk``: a large read (the shell may pause the cyclic GC while it is parsed).

    ``same_connection``: the commands rely on what the previous exchange left on the
    connection (a WATCH): if the shell's data connection is not that one, connected without
    a break since, nothing is sent and the answer is None. The data connection is the
    shell's alone (nothing else sends on it or disconnects it), so a connection that is still
    connected has not been replaced under the flow.

    ``block_ms``: the first command is a blocking read of at most that long (the commands
    after it wait in the server's buffer and run when it returns); a rebalance event cuts it
    short (the shell's ``wake`` unblocks the connection), as it does a :class:`Wait`."""

    commands: list[Any]  # command tuples, or a command's packed RESP bytes
    what: str
    bulk: bool = False
    same_connection: bool = False
    block_ms: int = 0


@dataclass(slots=True)
class Reset:
    """Drop the data connection (a transaction was left half-read): the next one is new."""


@dataclass(slots=True)
class LoadFunctions:
    """Load the Functions library (a server restarted empty, or a new primary)."""


@dataclass(slots=True)
class OnNodes:
    """Cluster: run single-slot ``commands`` (key, command) one pipeline per node, ``waits``
    after each node's; a call whose slot is moving keeps its redirect error in place."""

    commands: list[tuple[str, tuple[Any, ...]]]
    what: str
    waits: list[tuple[Any, ...]]
    durability: Durability


@dataclass(slots=True)
class Wait:
    """Block up to ``block_ms`` until a stream of ``waiting`` (stream -> tail id) has an entry
    after its tail, or a rebalance event is posted."""

    waiting: dict[str, str]
    block_ms: int


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Callback:
    """Call a user's rebalance callback (awaited if it returns an awaitable)."""

    fn: Callable[..., Any]
    arg: Any


@dataclass(slots=True)
class ReadTopics:
    """The stored metadata of ``names``."""

    names: tuple[str, ...]


@dataclass(slots=True)
class Claim:
    """Claim the fence of a granted partition (True: ours; False: a newer grant holds it)."""

    tp: TopicPartition
    grant: Grant
    layout: TopicLayout


Op = (
    Exchange | Reset | LoadFunctions | OnNodes | Wait | Sleep | Callback | ReadTopics
    | Claim
)  # fmt: skip
Step = Generator[Op, Any, Any]


@dataclass(slots=True)
class Turn:
    """What a step did when resumed: asked ``op`` next, or (``op`` None) ended with ``value``."""

    op: Op | None
    value: Any = None


def advance(step: Step, reply: Any, error: BaseException | None) -> Turn:
    """Resume ``step`` with the answer to its last request (or throw that request's error in)."""
    try:
        return Turn(step.send(reply) if error is None else step.throw(error))
    except StopIteration as stop:
        return Turn(None, stop.value)


def drive(step: Step, answer: Callable[[Op], Any]) -> Any:
    """Run ``step`` to its end, answering each request with ``answer`` (blocking); an error
    of ``answer`` is thrown into the step, which may handle it."""
    turn = advance(step, None, None)
    while turn.op is not None:
        try:
            turn = advance(step, answer(turn.op), None)
        except Exception as err:
            turn = advance(step, None, err)
    return turn.value


def claims(assigned: dict[TopicPartition, Grant], layouts: Layouts) -> Step:
    """Claim the fences of newly granted partitions; returns (claimed grants, the partitions
    to hand back because their node could not be reached).

    A partition this consumer has not seen yet (its topic grew, and another member learned
    of it first) has its topic's metadata read first: its keys are named by it."""
    mine: dict[TopicPartition, Grant] = {}
    failed: set[TopicPartition] = set()
    unknown = sorted({tp.topic for tp in assigned if not layouts.covers(tp.topic, tp.partition)})
    if unknown:
        try:
            metas = yield ReadTopics(tuple(unknown))
            layouts.update(m.layout for m in metas.values())
        except PartstreamError as err:
            log.warning("cannot read topics %s now (%s)", unknown, err)
    for tp, grant in assigned.items():
        try:
            claimed = yield Claim(tp, grant, layouts.of(tp.topic))
        except PartstreamError as err:
            # Its node is unreachable (failing over, say): hand the partition back rather
            # than hold a grant nobody reads; it is granted again once it can be claimed.
            log.warning("%s: cannot claim its fence now (%s); handing it back", tp, err)
            failed.add(tp)
            continue
        if claimed:
            mine[tp] = grant
        else:
            log.info("%s: a newer grant already holds the fence", tp)
    return mine, failed


def poll_wait_steps(
    waiting: dict[str, str],
    block_ms: int,
    node_of: Callable[[str | bytes], Any],
    interrupted: Callable[[], bool],
) -> Steps[None]:
    """Cluster: wait up to ``block_ms`` until a stream in ``waiting`` (stream -> tail id) has
    an entry after its tail, or ``interrupted()`` (a rebalance event is waiting).

    A blocking read over several streams exists only for keys of one slot, and every
    partition has its own slot: so each node's streams are polled (one pipeline per node of
    single-key XREADs, no BLOCK) every 2 ms at first, backing off to 25 ms while idle. New
    data is seen within that interval."""
    deadline = time.monotonic() + block_ms / 1000
    commands = [
        (key, (b"XREAD", "COUNT", 1, "STREAMS", key, tail)) for key, tail in waiting.items()
    ]
    pause = 0.002
    while True:
        replies = yield from per_node_steps(commands, node_of, attempts=1)
        if any(r is not None for r in replies):
            return  # data, or a slot moved: the next fetch finds out
        remaining = deadline - time.monotonic()
        if remaining <= 0 or interrupted():
            return
        yield Pause(min(pause, remaining))
        pause = min(pause * 2, 0.025)


@contextmanager
def gc_paused(paused: bool = True) -> Iterator[None]:
    """Pause the cyclic GC while a large read is parsed: tens of thousands of short-lived,
    acyclic objects would have it rescan them over and over (~2x)."""
    paused = paused and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class Runner(Protocol):
    """What the flow asks of a member runner (threaded or asyncio), none of it I/O."""

    def session_alive(self, margin: float = 0.0) -> bool: ...

    def wake(self) -> None: ...


class Events:
    """Rebalance events the heartbeat thread or task posts, applied by the consumer in order.

    ``wake`` interrupts a blocking wait of the consumer. Thread-safe (deque appends and pops
    are atomic); ``done`` is anything with ``set()``: a threading or an asyncio event."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._queue: deque[tuple[str, Any, Any]] = deque()
        self.wake = wake

    def post(self, kind: str, tps: Any, done: Any = None) -> None:
        self._queue.append((kind, tps, done))
        self.wake()

    def pending(self) -> bool:
        return bool(self._queue)

    def pop(self) -> tuple[str, Any, Any] | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def release_all(self) -> None:
        """Closing: nobody waits for the consumer any more."""
        for _, _, done in self._queue:
            if done is not None:
                done.set()
        self._queue.clear()


def safe_retention(spec: TopicSpec) -> str:
    """consume.lua's retention argument: what safe retention keeps, or '' (none)."""
    if not spec.safe_retention or not (spec.max_length or spec.retention_ms):
        return ""
    return f"{spec.max_length or 0} {spec.retention_ms or 0}"
