"""The asyncio shell of group membership: :class:`AsyncMember`, and the fence calls a member
makes, awaited on a ``redis.asyncio`` client.

The logic is :class:`coordinator.member.MemberCore`'s steps (join, heartbeat, leave, target
assignment) and :mod:`partitions._base.fence`'s requests; this module only runs them with
:class:`partitions._base.aiofunctions.AsyncFunctions`, one operation at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Literal

from coordinator.member import MemberCore
from coordinator.records import HeartbeatResult
from partitions._base.aiofunctions import AsyncFunctions
from partitions._base.durability import Durability
from partitions._base.fence import fence_held, fence_request
from partitions._base.keys import Keys
from partitions._base.steps import Steps, T
from partitions._base.types import TopicPartition


class AsyncMember(MemberCore):
    """One member of ``group`` subscribed to ``topics`` ({name: partition count}), on a
    redis.asyncio client (see :class:`coordinator.member.Member`, its blocking twin).

    Safe to share between the tasks of one event loop: operations are serialized by an
    asyncio lock. Cancelling one mid-call leaves the member's state as of its last reply;
    the server-side effect of a call cancelled in flight is unknown, as after a timeout.
    """

    def _open(self, client: Any) -> None:
        self.functions = AsyncFunctions(client, retry_for=0)
        self._lock = asyncio.Lock()

    async def _run(self, steps: Steps[T]) -> T:
        async with self._lock:
            return await self.functions.run(steps)

    async def join(self) -> HeartbeatResult:
        """See :meth:`MemberCore.join_steps`."""
        return await self._run(self.join_steps())

    async def heartbeat(self, released: Iterable[TopicPartition] = ()) -> HeartbeatResult:
        """See :meth:`MemberCore.heartbeat_steps`."""
        return await self._run(self.heartbeat_steps(released))

    async def leave(self, *, temporary: bool = False) -> None:
        """See :meth:`MemberCore.leave_steps`."""
        await self._run(self.leave_steps(temporary=temporary))

    async def compute_target(self, epoch: int) -> bool:
        """See :meth:`MemberCore.target_steps`."""
        return await self._run(self.target_steps(epoch))


async def fence_async(
    functions: AsyncFunctions,
    op: Literal["claim", "release"],
    keys: Keys,
    group: str,
    tp: TopicPartition,
    member_id: str,
    token: int,
    *,
    durability: Durability | None = None,
) -> bool:
    """:func:`partitions._base.fence.claim_fence` (``op="claim"``) or ``release_fence``,
    awaited: True if the fence was taken (freed), False if a newer grant holds it."""
    call = fence_request(op, keys, group, tp.topic, tp.partition, member_id, token)
    return fence_held(await functions.call(*call.parts(), durability=durability))
