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
from partitions._base.functions import Functions
from partitions._base.keys import Keys, validate_name
from partitions._base.replies import parse_describe, parse_member_reply, script_status
from partitions._base.settings import GroupSettings
from partitions._base.types import (
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


class Member:
    """One member of ``group`` subscribed to ``topics`` ({name: partition count}).

    Thread-safe: calls are serialized by an internal lock. The member's state is whatever
    the last reply said; after FencedError or UnknownMemberError it must :meth:`join` again
    (and its user must first drop every partition it owned).
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
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = validate_name(group, "group")
        self.instance_id = validate_name(instance_id, "instance id") if instance_id else None
        self.member_id = validate_name(member_id or uuid.uuid4().hex, "member id")
        self.client_info = client_info
        self.settings = settings or GroupSettings()
        self._topics = dict(topics)
        self._spec = topics_spec(self._topics)
        self._spec_dirty = False
        # No failover grace: the runner retries a failed heartbeat on its own schedule.
        self._functions = Functions(client, retry_for=0)
        self._lock = threading.RLock()
        self._epoch: int | None = None
        # Once joined, a rejoin must find the group: a vanished group is lost state.
        self._was_member = False
        self.last: HeartbeatResult | None = None

    @property
    def joined(self) -> bool:
        """Whether the member holds a session (as of its last reply)."""
        return self._epoch is not None

    @property
    def member_epoch(self) -> int | None:
        return self._epoch

    def update_topics(self, topics: Mapping[str, int]) -> None:
        """Change the subscription or partition counts; sent with the next heartbeat."""
        with self._lock:
            self._spec = topics_spec(topics)
            self._topics = dict(topics)
            self._spec_dirty = True

    @property
    def durability(self) -> Durability:
        """The group's durability: as stored with the group once known, else this member's."""
        return (self.last.settings if self.last is not None else self.settings).durability

    def _wait_ms(self) -> int:
        # A heartbeat that cannot get its replicas within an interval fails, and is retried.
        s = self.last.settings if self.last is not None else self.settings
        return s.heartbeat_interval_ms

    def _call(self, *args: Any) -> HeartbeatResult:
        reply = self._functions.call(
            "member",
            self.keys.group_keys(self.group),
            list(args),
            context=f"{args[0]} of {self.member_id} in group {self.group}",
            durability=self.durability,
            wait_ms=self._wait_ms(),
        )
        try:
            result = parse_member_reply(reply, self.group)
        except MembershipError:
            self._epoch = None
            self.last = None
            raise
        self._epoch = result.member_epoch
        self.last = result
        return result

    def join(self) -> HeartbeatResult:
        """Join (or rejoin) the group, creating it with this member's settings if undeclared.

        Raises DuplicateInstanceError if a live member holds the same instance id.
        """
        with self._lock:
            result = self._call(
                "join",
                self.member_id,
                self.instance_id or "",
                self.client_info,
                self._spec,
                "1" if self._was_member else "0",
                *self.settings.to_fields(),
            )
            self._was_member = True
            self._spec_dirty = False
            try:
                self.client.sadd(self.keys.groups, self.group)
            except rex.RedisError as err:
                raise translate(err, f"registering group {self.group}") from err
            return self._settle(result)

    def heartbeat(self, released: Iterable[TopicPartition] = ()) -> HeartbeatResult:
        """Heartbeat, handing back ``released`` partitions; returns the full current state.

        Raises UnknownMemberError (evicted: rejoin) or FencedError (stale epoch: rejoin).
        """
        with self._lock:
            if self._epoch is None:
                raise UnknownMemberError(f"member {self.member_id} has not joined {self.group}")
            spec = self._spec if self._spec_dirty else ""
            result = self._call(
                "heartbeat", self.member_id, self._epoch, join_partitions(released), spec
            )
            self._spec_dirty = False
            return self._settle(result)

    def _settle(self, result: HeartbeatResult) -> HeartbeatResult:
        # A stale target: compute and submit it, then heartbeat once more to get the grants.
        if result.target_stale and self.compute_target(result.group_epoch):
            created = result.created_group
            result = self._call("heartbeat", self.member_id, self._epoch, "", "")
            if created:
                result = replace(result, created_group=True)
                self.last = result
        return result

    def leave(self, *, temporary: bool = False) -> None:
        """Leave the group. ``temporary`` (static members only) keeps the partitions reserved
        for this instance id until the session timeout; otherwise they move now."""
        with self._lock:
            self._functions.call(
                "member",
                self.keys.group_keys(self.group),
                ["leave", self.member_id, self._epoch or 0, "1" if temporary else "0"],
                context=f"leave of {self.member_id} in group {self.group}",
                durability=self.durability,
                wait_ms=self._wait_ms(),
            )
            self._epoch = None
            self.last = None

    def compute_target(self, epoch: int) -> bool:
        """Compute the target at group ``epoch`` and CAS it; True if a target now exists there."""
        reply = self._functions.call(
            "admin", self.keys.group_keys(self.group), ["describe"], context="describe"
        )
        desc = parse_describe(reply, self.group)
        if desc.epoch != epoch or desc.target_epoch == desc.epoch:
            return desc.target_epoch == desc.epoch
        # Instance ids order static members, so a restart under a new member id changes
        # nothing any assignor computes.
        members = {
            m.member_id: MemberSubscription(frozenset(m.topics), m.instance_id)
            for m in desc.members
        }
        current = {m.member_id: set(m.target) for m in desc.members}
        try:
            target = assign(desc.assignor, members, desc.topics, current)
        except ConfigError:
            log.warning("group %s: cannot run assignor %r here", self.group, desc.assignor)
            return False
        args: list[Any] = ["assign", desc.epoch]
        for member_id in sorted(target):
            args += [member_id, join_partitions(target[member_id])]
        reply = self._functions.call(
            "admin",
            self.keys.group_keys(self.group),
            args,
            context="assign",
            durability=self.durability,
            wait_ms=self._wait_ms(),
        )
        status = script_status(reply)
        if status == "ERR":
            log.error("group %s: target rejected: %s", self.group, reply[2])
        return status in ("OK", "DONE")
