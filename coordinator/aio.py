"""The asyncio shell of group membership: :class:`AsyncMember`, and the fence calls a member
makes, awaited on a ``redis.asyncio`` client.

The logic is :class:`coordinator.member.MemberCore`'s steps (join, heartbeat, leave, target
assignment) and :mod:`partitions._base.fence`'s requests; this module only runs them with
:class:`partitions._base.aiofunctions.AsyncFunctions`, one operation at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

from coordinator.listener import GrantListener, notify
from coordinator.member import MemberCore
from coordinator.runner import RunnerBase
from coordinator.session import Backoff, Notify, ReleaseFence, Wait
from partitions._base.aiofunctions import AsyncFunctions
from partitions._base.durability import Durability
from partitions._base.fence import fence_held, fence_request
from partitions._base.keys import Keys, TopicLayout
from partitions._base.steps import Steps, T, adrive, dispatch
from partitions._base.types import Grant, HeartbeatResult, TopicPartition


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
    layout: TopicLayout,
    partition: int,
    member_id: str,
    token: int,
    *,
    durability: Durability | None = None,
    retry_for: float | None = None,
) -> bool:
    """:func:`partitions._base.fence.claim_fence` (``op="claim"``) or ``release_fence``,
    awaited: True if the fence was taken (freed), False if a newer grant holds it.
    ``retry_for``: seconds it is tried while the partition's node fails over (default:
    ``functions``')."""
    call = fence_request(op, keys, group, layout, partition, member_id, token)
    steps = functions.fcall_steps(call, durability=durability, retry_for=retry_for)
    return fence_held(await functions.run(steps))


class AsyncMemberRunner(RunnerBase):
    """Keeps one :class:`AsyncMember` alive from an asyncio task and reports partition
    changes: the asyncio twin of :class:`coordinator.runner.MemberRunner`, with the same
    methods (``start``/``close`` awaited) and the same behaviour, which is
    :class:`coordinator.session.Session`'s.

    Heartbeats run in their own task, so they go on while the application awaits anything
    (a slow handler, a long ``asyncio.sleep``); a handler that blocks the event loop without
    awaiting stops them too, as it stops every task (``max_poll_interval_ms`` still applies).
    Listener callbacks (:class:`coordinator.listener.GrantListener`) run in that task, in
    the order lost, revoked, assigned; they may be coroutine functions or plain ones. Use
    from one event loop. Cancelling the task that awaits :meth:`close` still closes: the
    member leaves.
    """

    def __init__(
        self,
        member: AsyncMember,
        listener: GrantListener | None = None,
        *,
        max_poll_interval_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(member, listener, max_poll_interval_ms, clock)
        self.member: AsyncMember = member
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._perform = dispatch(
            {
                **self._member_actions(),
                ReleaseFence: self._release_fence,
                Notify: lambda a: notify_async(self.listener, a),
                Wait: self._wait,
                Backoff: lambda a: _wait_for(self._stop, a.seconds),
            }
        )

    async def _drive(self, steps: Steps[None]) -> None:
        await adrive(steps, self._perform, errors=(Exception,))

    # -- public --------------------------------------------------------------------------
    async def start(self) -> AsyncMemberRunner:
        """Join (errors such as DuplicateInstanceError raise here) and start heartbeating."""
        await self._drive(self._session.start_steps())
        loop = self._session.loop_steps(lambda: self.member.joined, self._stop.is_set)
        self._task = asyncio.create_task(
            self._drive(loop), name=f"heartbeat-{self.member.member_id}"
        )
        return self

    def owned(self) -> dict[TopicPartition, Grant]:
        """The partitions this member owns now, with their grants (a copy)."""
        return dict(self._session.owned)

    def session_alive(self, margin: float = 0.0) -> bool:
        """False once the server may have evicted us (no successful heartbeat for a session)."""
        return self._session.session_alive(self.member.joined, margin)

    @contextmanager
    def polling(self) -> Iterator[None]:
        """See :meth:`coordinator.runner.MemberRunner.polling` (a plain ``with``: it never
        waits)."""
        if self._session.poll is None:
            yield
            return
        left = self._session.begin_poll()
        if left is not None:
            self._wake.set()  # rejoin now
            raise left
        try:
            yield
        finally:
            self._session.end_poll()

    def give_back(self, partitions: set[TopicPartition]) -> None:
        """See :meth:`coordinator.runner.MemberRunner.give_back`."""
        self._session.give_back(partitions)
        self._wake.set()

    def wake(self) -> None:
        """Heartbeat now (e.g. the subscription changed) instead of at the next interval."""
        self._wake.set()

    async def close(self, *, leave: bool = True, temporary: bool = False) -> None:
        """Stop heartbeating; revoke what is owned (listener commits) and leave the group.

        Shielded: a cancellation arriving meanwhile is raised once the member has left."""
        await asyncio.shield(self._close(leave, temporary))

    async def _close(self, leave: bool, temporary: bool) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        joined = lambda: self.member.joined  # noqa: E731
        await self._drive(
            self._session.close_steps(joined=joined, leave=leave, temporary=temporary)
        )

    async def __aenter__(self) -> AsyncMemberRunner:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the heartbeat task --------------------------------------------------------------
    async def _wait(self, action: Wait) -> None:
        await _wait_for(self._wake, action.seconds)
        self._wake.clear()

    async def _release_fence(self, action: ReleaseFence) -> bool:
        m, tp = self.member, action.tp
        return await fence_async(
            m.functions, "release", m.keys, m.group, m.layouts.of(tp.topic), tp.partition,
            m.member_id, action.grant.token,
        )  # fmt: skip


async def _wait_for(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, seconds))


async def notify_async(listener: GrantListener, action: Notify) -> None:
    """Call the listener's callback for ``action``, awaiting it if it is a coroutine."""
    result = notify(listener, action)
    if inspect.isawaitable(result):
        await result
