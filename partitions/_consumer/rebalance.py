"""Rebalances as a consumer sees them: the runner's callbacks (on the heartbeat thread of
:class:`~coordinator.runner.MemberRunner` or in the heartbeat task of
:class:`~coordinator.aio.AsyncMemberRunner`) become events that the consumer applies itself,
inside ``poll()``, on its own thread or task.

The runner claims the fence of a granted partition at once, then posts the event; a
revocation waits (at most half a session, so the session it keeps alive never expires) until
the consumer ran the user's ``on_partitions_revoked``, committed what was processed and
released the fence: only then does the runner hand the partition back. During close the
consumer itself is the caller, and applies a revocation at once. A blocked ``XREAD`` is cut
short with CLIENT UNBLOCK.

A consumer that stopped polling for ``max_poll_interval_ms`` gets a plain "lost" event: the
runner already released the fences and left, so the acks that event flushes are refused.
What an event does to the consumer's state is :class:`~partitions._consumer.flow.ConsumerFlow`'s;
what the bridge does is :class:`Bridge`'s steps, which :class:`ThreadBridge` and
:class:`AsyncBridge` only run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from coordinator.aio import fence_async
from coordinator.runner import MemberRunner
from partitions._admin.topics import TopicAdmin, read_meta_async
from partitions._base.fence import claim_fence
from partitions._base.keys import Layouts
from partitions._base.serde import Decoder
from partitions._base.settings import GroupSettings
from partitions._base.steps import Steps, adrive
from partitions._base.types import Grant, TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer import ops
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow, current_settings

log = logging.getLogger("partstream.consumer")


def compose(
    conn: Any,
    member: Any,
    config: ConsumerConfig,
    events: ops.Events,
    metas: dict[str, Any],
    *,
    listener: Any,
    shell: tuple[type[ThreadBridge], type[MemberRunner]] | tuple[type[AsyncBridge], Any],
    apply_here: Callable[[set[TopicPartition]], Any],
    closing: Callable[[], bool],
    metrics: Any = None,
    decoder: Decoder | None = None,
) -> tuple[Assignment, Any, ConsumerFlow]:
    """Wire one consumer: its assignment, its member's runner (heartbeats on a thread or in a
    task) with a bridge as its listener, and the flow over them. ``shell`` is (bridge class,
    runner class) of the threaded or the asyncio consumer, which calls this once."""
    bridge_class, runner_class = shell
    assignment = Assignment(conn.keys, member.group, member.member_id, member.layouts)
    settings = lambda: current_settings(member)  # noqa: E731
    bridge = bridge_class(
        conn, member.group, member.member_id, events, settings, apply_here=apply_here,
        closing=closing, layouts=member.layouts,
    )  # fmt: skip
    runner = runner_class(member, bridge, max_poll_interval_ms=config.max_poll_interval_ms)
    bridge.give_back = runner.give_back
    flow = ConsumerFlow(
        assignment, config, topics=metas, runner=runner, settings=settings, events=events,
        listener=listener, is_cluster=conn.is_cluster, metrics=metrics,
        update_topics=member.update_topics, decoder=decoder,
    )  # fmt: skip
    return assignment, runner, flow


@dataclass(slots=True)
class ApplyHere:
    """Closing: the consumer itself revokes; the result is True if it applied it at once."""

    revoked: set[TopicPartition]


@dataclass(slots=True)
class AwaitDone:
    """Wait up to ``seconds`` for ``done`` (a threading or asyncio event); the result is
    whether it was set."""

    done: Any
    seconds: float


class Bridge:
    """The runner's listener: turns its callbacks into the consumer's events, as steps
    (what each callback does, written once). ``give_back`` hands unclaimable grants back to
    the runner."""

    def __init__(
        self,
        group: str,
        member_id: str,
        events: ops.Events,
        settings: Callable[[], GroupSettings],
        *,
        closing: Callable[[], bool],
        layouts: Layouts,
    ) -> None:
        self.group, self.member_id = group, member_id
        self.layouts = layouts
        self.events = events
        self.settings = settings
        self.closing = closing
        self.give_back: Callable[[set[TopicPartition]], None] = lambda tps: None

    def revoked_steps(self, revoked: set[TopicPartition], done: Any) -> Steps[None]:
        if (yield ApplyHere(revoked)):
            return
        self.events.post("revoke", revoked, done)
        # Wait for the consumer to finish and commit, but never so long that the session
        # (which the runner keeps alive) expires: then the records are simply redelivered.
        wait_s = self.settings().session_timeout_ms / 2000
        if not self.closing() and not (yield AwaitDone(done, wait_s)):
            log.warning(
                "consumer did not hand back %s in time; uncommitted records of "
                "them will be redelivered",
                sorted(revoked),
            )

    def assigned_steps(self, assigned: dict[TopicPartition, Grant]) -> Steps[None]:
        mine, failed = yield from ops.claims(assigned, self.layouts)
        if failed:
            self.give_back(failed)
        self.events.post("assign", mine)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.post("lost", lost)


class ThreadBridge(Bridge):
    """:class:`Bridge` on the threaded consumer: called on the heartbeat thread (or the
    closing consumer's own thread, where ``apply_here`` revokes at once)."""

    def __init__(
        self,
        conn: Connection,
        group: str,
        member_id: str,
        events: ops.Events,
        settings: Callable[[], GroupSettings],
        *,
        apply_here: Callable[[set[TopicPartition]], bool],
        closing: Callable[[], bool],
        layouts: Layouts,
    ) -> None:
        super().__init__(group, member_id, events, settings, closing=closing, layouts=layouts)
        self.conn = conn
        self.apply_here = apply_here

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        ops.drive(self.revoked_steps(revoked, threading.Event()), self._answer)

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        ops.drive(self.assigned_steps(assigned), self._answer)

    def _answer(self, op: Any) -> Any:
        if isinstance(op, ApplyHere):
            return self.apply_here(op.revoked)
        if isinstance(op, AwaitDone):
            return op.done.wait(op.seconds)
        if isinstance(op, ops.ReadTopics):
            admin = TopicAdmin(self.conn)
            return {name: admin.get(name) for name in op.names}
        s = self.settings()
        return claim_fence(
            self.conn.client, self.conn.keys, self.group, op.layout, op.tp.partition,
            self.member_id, op.grant.token, durability=s.durability,
            retry_for=s.heartbeat_interval_ms / 1000,
        )  # fmt: skip


class AsyncBridge(Bridge):
    """:class:`Bridge` on the asyncio consumer: awaited in the heartbeat task (or, closing, in
    the consumer's close, where ``apply_here`` revokes at once); fences claimed with awaits."""

    def __init__(
        self,
        conn: Any,
        group: str,
        member_id: str,
        events: ops.Events,
        settings: Callable[[], GroupSettings],
        *,
        apply_here: Callable[[set[TopicPartition]], Awaitable[bool]],
        closing: Callable[[], bool],
        layouts: Layouts,
    ) -> None:
        super().__init__(group, member_id, events, settings, closing=closing, layouts=layouts)
        self.conn = conn
        self.apply_here = apply_here

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await adrive(
            self.revoked_steps(revoked, asyncio.Event()), self._answer, errors=(Exception,)
        )

    async def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        await adrive(self.assigned_steps(assigned), self._answer, errors=(Exception,))

    async def _answer(self, op: Any) -> Any:
        if isinstance(op, ApplyHere):
            return await self.apply_here(op.revoked)
        if isinstance(op, AwaitDone):
            try:
                await asyncio.wait_for(op.done.wait(), op.seconds)
            except TimeoutError:
                return False
            return True
        if isinstance(op, ops.ReadTopics):
            return {name: await read_meta_async(self.conn, name) for name in op.names}
        s = self.settings()
        return await fence_async(
            self.conn.functions, "claim", self.conn.keys, self.group, op.layout, op.tp.partition,
            self.member_id, op.grant.token, durability=s.durability,
            retry_for=s.heartbeat_interval_ms / 1000,
        )  # fmt: skip
