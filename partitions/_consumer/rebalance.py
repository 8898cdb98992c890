"""Rebalances as the threaded consumer sees them: heartbeat-thread callbacks become events
that the consumer applies on its own thread, inside ``poll()``.

The heartbeat thread (see :class:`~coordinator.runner.MemberRunner`) claims the fence of a
granted partition at once, then posts the event; a revocation waits (at most half a session,
so the session it keeps alive never expires) until the consumer ran the user's
``on_partitions_revoked``, committed what was processed and released the fence: only then
does the runner hand the partition back. A blocked ``XREAD`` is cut short with CLIENT UNBLOCK.

A consumer that stopped polling for ``max_poll_interval_ms`` gets a plain "lost" event: the
runner already released the fences and left, so the acks that event flushes are refused.
What an event does to the consumer's state is :class:`~partitions._consumer.flow.ConsumerFlow`'s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from coordinator.runner import MemberRunner
from partitions._base.fence import claim_fence
from partitions._base.serde import Decoder
from partitions._base.settings import GroupSettings
from partitions._base.types import Grant, TopicPartition
from partitions._client.config import ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer import ops
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow, current_settings

log = logging.getLogger("partstream.consumer")


def compose(
    conn: Connection,
    member: Any,
    config: ConsumerConfig,
    events: ops.Events,
    metas: dict[str, Any],
    *,
    listener: Any,
    apply_here: Callable[[set[TopicPartition]], bool],
    closing: Callable[[], bool],
    metrics: Any = None,
    decoder: Decoder | None = None,
) -> tuple[Assignment, MemberRunner, ConsumerFlow]:
    """Wire one consumer: its assignment, its member's runner (heartbeats on a thread, the
    Bridge as its listener) and the flow over them. Either shell calls this once."""
    assignment = Assignment(conn.keys, member.group, member.member_id)
    bridge = Bridge(
        conn, member.group, member.member_id, events, lambda: current_settings(member),
        apply_here=apply_here, closing=closing,
    )  # fmt: skip
    runner = MemberRunner(member, bridge, max_poll_interval_ms=config.max_poll_interval_ms)
    bridge.give_back = runner.give_back
    flow = ConsumerFlow(
        assignment, config, topics=metas, runner=runner, settings=lambda: current_settings(member),
        events=events, listener=listener, is_cluster=conn.is_cluster, metrics=metrics,
        update_topics=member.update_topics, decoder=decoder,
    )  # fmt: skip
    return assignment, runner, flow


class Bridge:
    """The runner's listener: turns heartbeat-thread callbacks into the consumer's events.

    ``apply_here`` (revocations during close, on the consumer's own thread) applies them at
    once; ``give_back`` hands unclaimable grants back to the runner."""

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
    ) -> None:
        self.conn, self.group, self.member_id = conn, group, member_id
        self.events = events
        self.settings = settings
        self.apply_here = apply_here
        self.closing = closing
        self.give_back: Callable[[set[TopicPartition]], None] = lambda tps: None

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.apply_here(revoked):
            return
        done = threading.Event()
        self.events.post("revoke", revoked, done)
        # Wait for the consumer to finish and commit, but never so long that the session
        # (which this thread keeps alive) expires: then the records are simply redelivered.
        if not self.closing() and not done.wait(self.settings().session_timeout_ms / 2000):
            log.warning(
                "consumer did not hand back %s in time; uncommitted records of "
                "them will be redelivered",
                sorted(revoked),
            )

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        mine, failed = ops.drive(ops.claims(assigned), self._claim)
        if failed:
            self.give_back(failed)
        self.events.post("assign", mine)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.post("lost", lost)

    def _claim(self, op: Any) -> bool:
        s = self.settings()
        return claim_fence(
            self.conn.client, self.conn.keys, self.group, op.tp.topic, op.tp.partition,
            self.member_id, op.grant.token, durability=s.durability,
            retry_for=s.heartbeat_interval_ms / 1000,
        )  # fmt: skip
