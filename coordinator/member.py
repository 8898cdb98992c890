"""A member of a consumer group: join, heartbeat, leave, and leaderless target assignment.

The coordinator has no leader client. When a heartbeat reply says the target assignment is
older than the group epoch, the member reads the group (one atomic describe), computes the
target with the group's assignor (deterministic: every member would compute the same) and
submits it with a compare-and-set on the group epoch: the first writer wins, the others see
it done. Grants, revocations and epochs are decided only by the server-side scripts.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import redis.exceptions as rex

from coordinator.assignors import assign
from partitions._base.durability import Durability
from partitions._base.errors import ConfigError, MembershipError, UnknownMemberError, translate
from partitions._base.failover import budget, ride_steps
from partitions._base.functions import FCall, Functions, Send, call_steps, is_cluster_client
from partitions._base.keys import Keys, Layouts, TopicLayout, validate_name
from partitions._base.replies import parse_describe, parse_member_reply
from partitions._base.settings import GroupSettings
from partitions._base.steps import Steps, T
from partitions._base.types import (
    GroupDescription,
    HeartbeatResult,
    MemberSubscription,
    TopicPartition,
    join_partitions,
)

log = logging.getLogger("partstream.coordinator")


def topics_spec(topics: Mapping[str, int]) -> str:
    """The ``name=count ...`` form member.lua takes (validated, sorted)."""
    parts = []
    for name, count in sorted(topics.items()):
        validate_name(name, "topic")
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ConfigError(f"topic {name!r}: partition count must be a positive int")
        parts.append(f"{name}={count}")
    return " ".join(parts)


# -- requests: what each operation sends (pure) -------------------------------------------


def join_request(
    keys: Keys,
    group: str,
    member_id: str,
    instance_id: str | None,
    client_info: str,
    spec: str,
    rejoin: bool,
    settings: GroupSettings,
) -> FCall:
    """member.lua ``join``: create the group with ``settings`` if undeclared; ``rejoin``
    means the group must exist (a member that was in it finds it vanished: lost state)."""
    args = ["join", member_id, instance_id or "", client_info, spec, "1" if rejoin else "0"]
    return FCall(
        "member",
        keys.group_keys(group),
        [*args, *settings.to_fields()],
        f"join of {member_id} in group {group}",
    )


def heartbeat_request(
    keys: Keys,
    group: str,
    member_id: str,
    epoch: int,
    released: Iterable[TopicPartition] = (),
    spec: str = "",
) -> FCall:
    """member.lua ``heartbeat``: hand back ``released``, send ``spec`` if it changed."""
    return FCall(
        "member",
        keys.group_keys(group),
        ["heartbeat", member_id, epoch, join_partitions(released), spec],
        f"heartbeat of {member_id} in group {group}",
    )


def leave_request(
    keys: Keys, group: str, member_id: str, epoch: int, *, temporary: bool = False
) -> FCall:
    """member.lua ``leave``; ``temporary`` keeps a static member's partitions reserved."""
    return FCall(
        "member",
        keys.group_keys(group),
        ["leave", member_id, epoch, "1" if temporary else "0"],
        f"leave of {member_id} in group {group}",
    )


def describe_request(keys: Keys, group: str) -> FCall:
    """admin.lua ``describe``: the whole group in one atomic read."""
    return FCall("admin", keys.group_keys(group), ["describe"], "describe")


def assign_request(
    keys: Keys, group: str, epoch: int, target: Mapping[str, Iterable[TopicPartition]]
) -> FCall:
    """admin.lua ``assign``: the target at group ``epoch``, compare-and-set on the epoch."""
    args: list[Any] = ["assign", epoch]
    for member_id in sorted(target):
        args += [member_id, join_partitions(target[member_id])]
    return FCall("admin", keys.group_keys(group), args, "assign")


def compute_target(desc: GroupDescription) -> dict[str, set[TopicPartition]]:
    """The target the group's assignor computes from a describe (deterministic: every member
    computes the same). ConfigError if the assignor cannot run here."""
    # Instance ids order static members, so a restart under a new member id changes nothing
    # any assignor computes.
    members = {
        m.member_id: MemberSubscription(frozenset(m.topics), m.instance_id) for m in desc.members
    }
    current = {m.member_id: set(m.target) for m in desc.members}
    return assign(desc.assignor, members, desc.topics, current)


def assign_status(reply: list[Any]) -> tuple[str, str]:
    """(status, message) of an assign reply: OK / DONE (someone else did it) / STALE / ERR."""
    status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    message = reply[2] if status == "ERR" and len(reply) > 2 else ""
    return status, message.decode() if isinstance(message, bytes) else str(message)


# -- the member: state and steps, then the blocking shell ----------------------------------


def target_due(result: HeartbeatResult) -> bool:
    """Whether a member should compute the group's stale target now.

    Not while the group epoch is younger than a tenth of the heartbeat interval, unless the
    member is alone: every join and leave bumps the epoch, and a target computed in the middle
    of a burst (a rolling deploy, 1,000 members starting) is stale before it is written. A
    member with a stale target heartbeats every fifth of an interval (it is reconciling), so
    the first heartbeat after the burst computes it, once. A reply without the epoch's age
    (a recorded one) computes at once.
    """
    if result.epoch_age_ms is None or result.members <= 1:
        return True
    return result.epoch_age_ms >= result.settings.heartbeat_interval_ms // 10


def _plain(topics: Mapping[str, int]) -> list[TopicLayout]:
    return [TopicLayout(name, count) for name, count in topics.items()]


class MemberCore:
    """A member's identity and what its last reply said, and each operation as steps
    (partitions/_base/steps.py) over the Functions actions: no I/O, no lock. The blocking
    :class:`Member` and the asyncio :class:`coordinator.aio.AsyncMember` run these steps.

    After FencedError or UnknownMemberError it must join again (and its user must first drop
    every partition it owned).
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        group: str,
        topics: Mapping[str, int],
        *,
        instance_id: str | None = None,
        member_id: str | None = None,
        client_info: str = "",
        settings: GroupSettings | None = None,
        layouts: Layouts | None = None,
    ) -> None:
        # The client is only held for the shell (and the runner's fence calls): the steps
        # need to know whether it is a cluster's, nothing else.
        self.client = client
        self.keys = keys
        # How the topics' partition keys are named (read from their metadata by whoever
        # owns this member, as a consumer does); the runner needs it only to release fences.
        # Without it, the topics' original tags (topics with no metadata, as the
        # coordinator's own tests have), following the counts.
        self._own_layouts = layouts is None
        self.layouts = Layouts(_plain(topics)) if layouts is None else layouts
        self.group = validate_name(group, "group")
        self.instance_id = validate_name(instance_id, "instance id") if instance_id else None
        self.member_id = validate_name(member_id or uuid.uuid4().hex, "member id")
        self.client_info = client_info
        self.settings = settings or GroupSettings()
        self._topics = dict(topics)
        self._spec = topics_spec(self._topics)
        self._spec_dirty = False
        self._cluster = is_cluster_client(client)
        self._epoch: int | None = None
        # Once joined, a rejoin must find the group: a vanished group is lost state.
        self._was_member = False
        self.last: HeartbeatResult | None = None
        self._open(client)

    def _open(self, client: Any) -> None:
        """The shell's part of construction: what runs the steps on ``client``."""

    @property
    def joined(self) -> bool:
        """Whether the member holds a session (as of its last reply)."""
        return self._epoch is not None

    @property
    def member_epoch(self) -> int | None:
        return self._epoch

    def update_topics(self, topics: Mapping[str, int]) -> None:
        """Change the subscription or partition counts; sent with the next heartbeat."""
        self._spec = topics_spec(topics)
        self._topics = dict(topics)
        self._spec_dirty = True
        if self._own_layouts:
            self.layouts.update(_plain(topics))

    @property
    def durability(self) -> Durability:
        """The group's durability: as stored with the group once known, else this member's."""
        return (self.last.settings if self.last is not None else self.settings).durability

    def _wait_ms(self) -> int:
        # A heartbeat that cannot get its replicas within an interval fails, and is retried.
        s = self.last.settings if self.last is not None else self.settings
        return s.heartbeat_interval_ms

    def _send(self, call: FCall, *, durable: bool = True) -> Steps[Any]:
        """``call``, riding out a failover for the group's session timeout (clamped to
        10-30 s; see partitions/_base/failover.py). Every member call is safe to send again
        after it may have run: a join under the same member id finds its own record and
        refreshes it (no second epoch bump); a heartbeat is fenced by the member epoch (the
        one it had, or the one before, passes; a release already applied is a no-op); a leave
        of a member that is gone is OK; an assign is a compare-and-set on the group epoch
        (repeated, it answers DONE or STALE); a describe only reads."""
        s = self.last.settings if self.last is not None else self.settings
        return ride_steps(
            lambda: call_steps(
                call,
                retry_for=0,
                cluster=self._cluster,
                durability=self.durability if durable else None,
                wait_ms=self._wait_ms(),
            ),
            budget(self.client, s.session_timeout_ms),
            cluster=self._cluster,
        )

    def _register_steps(self) -> Steps[None]:
        # SADD to the groups set (another slot than the group's keys): idempotent, so it
        # rides out a failover like the member's calls.
        s = self.last.settings if self.last is not None else self.settings

        def sadd() -> Steps[None]:
            yield Send(("SADD", self.keys.groups, self.group))

        try:
            yield from ride_steps(
                sadd, budget(self.client, s.session_timeout_ms), cluster=self._cluster
            )
        except (rex.RedisError, rex.RedisClusterException) as err:
            raise translate(err, f"registering group {self.group}") from err

    def _exchange(self, call: FCall) -> Steps[HeartbeatResult]:
        reply = yield from self._send(call)
        try:
            result = parse_member_reply(reply, self.group)
        except MembershipError:
            self._epoch = None
            self.last = None
            raise
        self._epoch = result.member_epoch
        self.last = result
        return result

    def join_steps(self) -> Steps[HeartbeatResult]:
        """Join (or rejoin) the group, creating it with this member's settings if undeclared.

        Raises DuplicateInstanceError if a live member holds the same instance id.
        """
        was_member = self._was_member
        result = yield from self._join_once(was_member)
        yield from self._register_steps()
        try:
            return (yield from self._settle(result))
        except UnknownMemberError:
            # Evicted between the join and its settling heartbeat: the join was answered by
            # a primary that died before its replica had it (the promoted one never saw this
            # member), or the session ran out while the call rode out a failover. Once more,
            # as the same first join (a group created by the lost join is not "lost state").
            log.info("member %s: evicted before settling its join; joining again", self.member_id)
            created = result.created_group
            result = yield from self._settle((yield from self._join_once(was_member)))
            if created and not result.created_group:
                result = replace(result, created_group=True)
                self.last = result
            return result

    def _join_once(self, was_member: bool) -> Steps[HeartbeatResult]:
        call = join_request(
            self.keys,
            self.group,
            self.member_id,
            self.instance_id,
            self.client_info,
            self._spec,
            was_member,
            self.settings,
        )
        result = yield from self._exchange(call)
        self._was_member = True
        self._spec_dirty = False
        return result

    def heartbeat_steps(self, released: Iterable[TopicPartition] = ()) -> Steps[HeartbeatResult]:
        """Heartbeat, handing back ``released`` partitions; the full current state.

        Raises UnknownMemberError (evicted: rejoin) or FencedError (stale epoch: rejoin).
        """
        if self._epoch is None:
            raise UnknownMemberError(f"member {self.member_id} has not joined {self.group}")
        spec = self._spec if self._spec_dirty else ""
        call = heartbeat_request(self.keys, self.group, self.member_id, self._epoch, released, spec)
        result = yield from self._exchange(call)
        self._spec_dirty = False
        return (yield from self._settle(result))

    def _settle(self, result: HeartbeatResult) -> Steps[HeartbeatResult]:
        # A stale target: compute and submit it, then heartbeat once more to get the grants.
        if (
            result.target_stale
            and target_due(result)
            and (yield from self.target_steps(result.group_epoch))
        ):
            created = result.created_group
            assert self._epoch is not None
            call = heartbeat_request(self.keys, self.group, self.member_id, self._epoch)
            result = yield from self._exchange(call)
            if created:
                result = replace(result, created_group=True)
                self.last = result
        return result

    def leave_steps(self, *, temporary: bool = False) -> Steps[None]:
        """Leave the group. ``temporary`` (static members only) keeps the partitions reserved
        for this instance id until the session timeout; otherwise they move now."""
        call = leave_request(
            self.keys, self.group, self.member_id, self._epoch or 0, temporary=temporary
        )
        yield from self._send(call)
        self._epoch = None
        self.last = None

    def assign_target(self, desc: GroupDescription) -> dict[str, set[TopicPartition]]:
        """The assignor's part of :meth:`target_steps` (:func:`compute_target`): pure, no
        I/O (a subclass times it: ``partstream bench coordinator --live``)."""
        return compute_target(desc)

    def target_steps(self, epoch: int) -> Steps[bool]:
        """Compute the target at group ``epoch`` and CAS it; True if a target now exists there."""
        reply = yield from self._send(describe_request(self.keys, self.group), durable=False)
        desc = parse_describe(reply, self.group)
        if desc.epoch != epoch or desc.target_epoch == desc.epoch:
            return desc.target_epoch == desc.epoch
        try:
            target = self.assign_target(desc)
        except ConfigError:
            log.warning("group %s: cannot run assignor %r here", self.group, desc.assignor)
            return False
        reply = yield from self._send(assign_request(self.keys, self.group, desc.epoch, target))
        status, message = assign_status(reply)
        if status == "ERR":
            log.error("group %s: target rejected: %s", self.group, message)
        return status in ("OK", "DONE")


class Member(MemberCore):
    """One member of ``group`` subscribed to ``topics`` ({name: partition count}), on a
    redis-py client.

    Thread-safe: calls are serialized by an internal lock. The member's state is whatever
    the last reply said; after FencedError or UnknownMemberError it must :meth:`join` again
    (and its user must first drop every partition it owned).
    """

    def _open(self, client: Any) -> None:
        self._functions = Functions(client, retry_for=0)
        self._lock = threading.RLock()

    def _run(self, steps: Steps[T]) -> T:
        with self._lock:
            return self._functions.run(steps)

    def update_topics(self, topics: Mapping[str, int]) -> None:
        with self._lock:
            super().update_topics(topics)

    def join(self) -> HeartbeatResult:
        """See :meth:`MemberCore.join_steps`."""
        return self._run(self.join_steps())

    def heartbeat(self, released: Iterable[TopicPartition] = ()) -> HeartbeatResult:
        """See :meth:`MemberCore.heartbeat_steps`."""
        return self._run(self.heartbeat_steps(released))

    def leave(self, *, temporary: bool = False) -> None:
        """See :meth:`MemberCore.leave_steps`."""
        self._run(self.leave_steps(temporary=temporary))

    def compute_target(self, epoch: int) -> bool:
        """See :meth:`MemberCore.target_steps`."""
        return self._run(self.target_steps(epoch))
