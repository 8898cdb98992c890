"""The member runner's core: what a member keeping its session does, and in which order,
written once (sans-I/O) for the threaded :class:`coordinator.runner.MemberRunner` and the
asyncio :class:`coordinator.aio.AsyncMemberRunner`.

:class:`Session` holds the state (owned partitions with their grants, partitions being
handed back, heartbeat timing, the poll interval) and runs as steps
(partitions/_base/steps.py) that yield the actions below; a shell only performs them: the
member's calls (:class:`Join`, :class:`Beat`, :class:`Leave`), fence releases, listener
callbacks (:class:`Notify`, always in the order lost, revoked, assigned) and waits. Errors of
an action are thrown back into the steps, which decide: rejoin, retry, give up.

Not thread-safe by itself: the threaded shell advances the steps and calls the public
methods under one lock, and performs the actions outside it (the asyncio shell runs all on
its event loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from coordinator.heartbeat import Heartbeat, PollTimer
from partitions._base.errors import (
    MembershipError,
    PartstreamError,
    PollIntervalExceededError,
    StateLostError,
)
from partitions._base.settings import GroupSettings
from partitions._base.steps import Steps
from partitions._base.types import Grant, HeartbeatResult, TopicPartition

log = logging.getLogger("partstream.coordinator")


@dataclass(frozen=True, slots=True)
class Join:
    """Join the group (the member's join); the result is its HeartbeatResult."""


@dataclass(frozen=True, slots=True)
class Beat:
    """Heartbeat, handing back ``released``; the result is its HeartbeatResult."""

    released: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the group (``temporary``: a static member's partitions stay reserved)."""

    temporary: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseFence:
    """Release ``tp``'s fence for ``grant`` (errors are the shell's to log: best effort)."""

    tp: TopicPartition
    grant: Grant


@dataclass(frozen=True, slots=True)
class Notify:
    """Call the listener: on_partitions_<kind>(partitions)."""

    kind: Literal["lost", "revoked", "assigned"]
    partitions: set[TopicPartition] | dict[TopicPartition, Grant] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``seconds`` or until woken (:meth:`Session.wake` asked, or the runner stops)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait ``seconds`` unless the runner stops (a rejoin's pause after a membership error)."""

    seconds: float


class Session:
    """A member's session as the runner keeps it (see the module docstring).

    ``member_id``/``group`` name it in logs and errors; ``settings`` are the member's until
    the group's come back; ``max_poll_interval_ms`` (None: no deadline) is the poll interval.
    """

    def __init__(
        self,
        member_id: str,
        group: str,
        settings: GroupSettings,
        *,
        max_poll_interval_ms: int | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.member_id = member_id
        self.group = group
        self.hb = Heartbeat(
            settings.heartbeat_interval_ms, settings.session_timeout_ms, clock=clock
        )
        self.owned: dict[TopicPartition, Grant] = {}
        self.releasing: set[TopicPartition] = set()
        self.reconciling = True
        self.last_error: BaseException | None = None
        # An error the member cannot recover from by rejoining (its group vanished): the
        # loop stops, every partition is reported lost, and the owner raises it.
        self.fatal: StateLostError | None = None
        self.poll = PollTimer(max_poll_interval_ms, clock=clock) if max_poll_interval_ms else None
        # Set when the member left for exceeding the poll interval; raised (once) by the next
        # polling request, which also lets the loop rejoin. Until then the member stays out.
        self.poll_left: PollIntervalExceededError | None = None

    # -- called by the shells (under their lock) -------------------------------------------
    def session_alive(self, joined: bool, margin: float = 0.0) -> bool:
        return joined and not self.hb.session_expired(margin)

    def begin_poll(self) -> PollIntervalExceededError | None:
        """A request for records begins: the error to raise (once) if the member left for
        the poll interval (the loop is then to be woken: it rejoins), else None."""
        assert self.poll is not None
        left, self.poll_left = self.poll_left, None
        if left is None:
            self.poll.begin()
        else:
            self.poll.reset()
        return left

    def end_poll(self) -> None:
        assert self.poll is not None
        self.poll.end()

    def give_back(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.owned.pop(tp, None)
        self.releasing |= partitions

    def delay(self) -> float:
        """How long the loop waits before its next step."""
        if self.poll_left is not None:  # out of the group until a poll wakes us
            return self.hb.interval
        delay = self.hb.time_to_next()
        if self.releasing:
            return 0.0
        if self.reconciling:  # partitions are waiting to move: poll faster
            delay = min(delay, self.hb.interval / 5)
        if self.poll is not None:
            delay = min(delay, self.poll.time_to_expiry())
        return delay

    # -- steps -----------------------------------------------------------------------------
    def start_steps(self) -> Steps[None]:
        """Join (errors such as DuplicateInstanceError raise) and report the first grants."""
        yield from self._apply((yield from self._join()))
        if self.poll is not None:
            self.poll.reset()

    def loop_steps(self, joined: Callable[[], bool], stopped: Callable[[], bool]) -> Steps[None]:
        """Heartbeat until ``stopped()``; ``joined()`` says whether the member holds a session."""
        while not stopped():
            yield Wait(self.delay())
            if stopped():
                break
            try:
                yield from self._tick(joined)
            except StateLostError as err:
                self.last_error = self.fatal = err
                log.error("member %s: %s", self.member_id, err)
                yield from self._drop_all()
                return
            except MembershipError as err:
                self.last_error = err
                log.info("member %s: %s", self.member_id, err)
                yield from self._drop_all()
                yield Backoff(min(1.0, self.hb.interval))
            except PartstreamError as err:
                self.last_error = err
                self.hb.failed()
                log.warning("heartbeat of %s failed: %s", self.member_id, err)
                if self.hb.session_expired():
                    yield from self._drop_all()
            except Exception as err:  # a listener bug must not kill heartbeats
                self.last_error = err
                log.exception("member %s: callback or heartbeat error", self.member_id)

    def close_steps(
        self, *, joined: Callable[[], bool], leave: bool, temporary: bool
    ) -> Steps[None]:
        """After the loop stopped: revoke what is owned (the listener commits), leave."""
        self.poll_left = None  # closed: ClosedError, not the interval, is what callers see
        owned = set(self.owned)
        self.owned.clear()
        if owned:
            yield Notify("revoked", owned)
        if leave and joined():
            try:
                yield Leave(temporary)
            except PartstreamError as err:
                log.warning("leave of %s failed: %s", self.member_id, err)

    def _tick(self, joined: Callable[[], bool]) -> Steps[None]:
        if self.poll is not None and (self.poll_left is not None or self.poll.expired()):
            if self.poll_left is None:
                yield from self._leave_for_poll(joined)
            return
        if not joined():
            yield from self._apply((yield from self._join()))
            return
        released = frozenset(self.releasing)
        self.hb.sent()
        result: HeartbeatResult = yield Beat(released)
        self.hb.succeeded()
        self.releasing -= released
        yield from self._apply(result)

    def _join(self) -> Steps[HeartbeatResult]:
        result: HeartbeatResult = yield Join()
        self.hb.update(result.heartbeat_interval_ms, result.session_timeout_ms)
        self.hb.reset()
        return result

    def _leave_for_poll(self, joined: Callable[[], bool]) -> Steps[None]:
        """The application has not polled for the whole interval: release the fences, leave
        the group so the coordinator reassigns the partitions now, report them lost. The
        member then stays out until the next poll."""
        assert self.poll is not None
        idle = self.poll.since_poll()
        owned = dict(self.owned)
        self.owned.clear()
        self.releasing.clear()
        self.reconciling = True
        limit_ms = self.poll.max_interval_ms
        parts = ", ".join(f"{t}/{p}" for t, p in sorted(owned)) or "none"
        self.poll_left = PollIntervalExceededError(
            f"member {self.member_id} left group {self.group}: the application did not poll "
            f"(poll(), iteration, commit()) for {idle:.1f} s, over max_poll_interval_ms="
            f"{limit_ms}; its partitions ({parts}) were released to the group's other members, "
            "and records handed out before are no longer its own (drop them: their acks "
            "are refused, their new owners get them again). The member is rejoining: poll "
            "again. If handlers legitimately take this long, raise max_poll_interval_ms or "
            "lower max_poll_records.",
            member_id=self.member_id,
            max_poll_interval_ms=limit_ms,
            idle_s=idle,
            partitions=frozenset(owned),
        )
        log.warning(
            "member %s of group %s: the application has not polled for %.1f s, over "
            "max_poll_interval_ms=%d (a stuck or too slow handler?): leaving the group so "
            "its partitions (%s) move to other members now; the next poll() rejoins and "
            "raises PollIntervalExceededError",
            self.member_id,
            self.group,
            idle,
            limit_ms,
            parts,
        )
        # Fences first: from now on the stuck call can neither read nor ack these partitions,
        # even before their new owners claim them.
        for tp, grant in sorted(owned.items()):
            try:
                yield ReleaseFence(tp, grant)
            except PartstreamError as err:
                log.warning("release of %s failed: %s", tp, err)
        if joined():
            try:
                yield Leave()  # for good, static members too: a stuck member is not restarting
            except PartstreamError as err:
                # Heartbeats have stopped: the session expires and the partitions move then.
                log.warning("leave of %s failed: %s", self.member_id, err)
        if owned:
            yield Notify("lost", set(owned))

    def _drop_all(self) -> Steps[None]:
        lost = set(self.owned)
        self.owned.clear()
        self.releasing.clear()
        self.reconciling = True
        if lost:
            yield Notify("lost", lost)

    def _apply(self, result: HeartbeatResult) -> Steps[None]:
        """Turn a reply into callbacks: lost (already someone else's), then revoked (still
        owned while the listener commits; handed back with the next heartbeat, sent at once),
        then assigned."""
        self.hb.update(result.heartbeat_interval_ms, result.session_timeout_ms)
        revoke = set(result.to_revoke) - self.releasing
        gone = {tp for tp in self.owned if tp not in result.owned}
        assigned = {
            tp: g
            for tp, g in result.owned.items()
            if tp not in result.to_revoke and self.owned.get(tp) != g
        }
        self.reconciling = result.reconciling
        if gone:
            for tp in gone:
                self.owned.pop(tp, None)
            yield Notify("lost", gone)
        if revoke:
            known = revoke & set(self.owned)
            if known:
                yield Notify("revoked", known)
            for tp in revoke:
                self.owned.pop(tp, None)
            self.releasing |= revoke  # delay() is now 0: handed back at once
        if assigned:
            self.owned.update(assigned)
            yield Notify("assigned", assigned)
