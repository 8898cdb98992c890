"""Rebalance listeners: what a member is told when its partitions move, and when.

A consumer group moves partitions cooperatively, in two steps, so no partition ever has two
owners that may both read and acknowledge it:

1. The old owner is told ``on_partitions_revoked``; when that callback returns it hands the
   partitions back (with its next heartbeat, sent at once).
2. Only then does the coordinator grant them to their new owner, which is told
   ``on_partitions_assigned``.

So, across processes, **a partition's revocation at its old owner always completes before it
is assigned to anyone else**: what the old owner commits in ``on_partitions_revoked`` is what
the new owner starts from. A member that was evicted or fenced (its session expired, its
epoch went stale, it stopped polling for ``max_poll_interval_ms``) is told
``on_partitions_lost`` instead: those partitions may already be someone else's, so nothing
may be committed for them, only local state dropped. Within one member the callbacks come
in the order lost, revoked, assigned, one at a time.

Which thread or task calls them:

* :class:`partitions.Consumer` calls a user's :class:`RebalanceListener` on the consumer's
  own thread, inside ``poll()`` (or the iteration step, or ``commit()``), never concurrently
  with the application's own use of the consumer; a callback may call ``commit()``.
* :class:`partitions.AsyncConsumer` awaits a user's :class:`AsyncRebalanceListener` (or calls
  a plain :class:`RebalanceListener`) in the task that awaits ``poll()`` / iterates.
* The coordinator's runners call their :class:`GrantListener` on the heartbeat thread
  (:class:`coordinator.runner.MemberRunner`) or heartbeat task
  (:class:`coordinator.aio.AsyncMemberRunner`); consumers implement it, not users. It is told
  each grant's token, to claim the partition's fence with.

Keep callbacks short (well under the session timeout): while one runs, partitions wait.
"""

from __future__ import annotations

from typing import Protocol

from coordinator.session import Notify
from partitions._base.types import Grant, TopicPartition


class RebalanceListener(Protocol):
    """The callbacks a :class:`partitions.Consumer` calls as its partitions move (see the
    module docstring for the thread and the ordering guaranteed). Like aiokafka's
    ``ConsumerRebalanceListener``. ``on_partitions_lost`` is optional: without it lost
    partitions are only dropped (nothing may be committed for them anyway).
    """

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """These partitions are about to move to another member; they are still yours until
        this returns. Commit what was processed (``consumer.commit()``), flush or drop state
        kept for them. Nobody else is assigned them before this returns."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """These partitions are now yours (fenced: no previous owner can still read or
        acknowledge them). Load state for them, or ``seek()``; records follow."""

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """These partitions were taken away without a revocation (evicted, fenced, or no poll
        for ``max_poll_interval_ms``): they may already be another member's. Drop their
        state; do not commit for them (it would be refused)."""


class AsyncRebalanceListener(Protocol):
    """:class:`RebalanceListener` for :class:`partitions.AsyncConsumer`: the same callbacks,
    the same guarantees, as coroutines (awaited in the consuming task)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """See :meth:`RebalanceListener.on_partitions_revoked` (``await consumer.commit()``)."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """See :meth:`RebalanceListener.on_partitions_assigned`."""

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """See :meth:`RebalanceListener.on_partitions_lost`."""


class GrantListener(Protocol):
    """What a runner tells its consumer (not a user): the same callbacks, with each assigned
    partition's :class:`~partitions._base.types.Grant` (the token to claim its fence with).
    Called on the heartbeat thread or task; may be coroutine functions for
    :class:`coordinator.aio.AsyncMemberRunner`."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> object: ...

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> object: ...

    def on_partitions_lost(self, lost: set[TopicPartition]) -> object: ...


class NullListener:
    """A listener that does nothing."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        pass


def notify(listener: GrantListener, action: Notify) -> object:
    """Call the listener's callback for ``action``; what it returned (an awaitable, from an
    asyncio listener)."""
    callback = getattr(listener, f"on_partitions_{action.kind}")
    partitions = action.partitions
    result: object = callback(dict(partitions) if action.kind == "assigned" else set(partitions))
    return result
