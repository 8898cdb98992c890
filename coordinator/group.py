"""Group administration: create, alter, inspect, list and delete consumer groups.

Every change to a group's state is one atomic server-side script (admin.lua); ``describe``
is one atomic read, so its members, epochs and owners are mutually consistent.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import ConfigError, UnknownGroupError, translate
from partitions._base.functions import Functions
from partitions._base.keys import Keys, validate_name
from partitions._base.replies import (
    error_code,
    group_topics,
    parse_describe,
    raise_for_status,
    script_status,
    settings_from_reply,
    text,
)
from partitions._base.settings import GroupSettings
from partitions._base.types import GroupDescription


class GroupAdmin:
    """Administers the consumer groups of one namespace. Thread-safe (stateless over the client)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.functions = Functions(client)

    def _admin(self, group: str, *args: Any, durability: Durability | None = None) -> list[Any]:
        reply: list[Any] = self.functions.call(
            "admin",
            self.keys.group_keys(group),
            list(args),
            context=f"{args[0]} group {group}",
            durability=durability,
        )
        raise_for_status(reply, group)
        return reply

    def create(
        self, group: str, settings: GroupSettings | None = None, *, exist_ok: bool = False
    ) -> bool:
        """Create ``group`` with ``settings`` (default: the defaults). True if it was created.

        An existing group keeps its stored settings: with ``exist_ok`` nothing happens, else
        ConfigError (use :meth:`alter`).
        """
        validate_name(group, "group")
        settings = settings or GroupSettings()
        reply = self._admin(group, "create", *settings.to_fields(), durability=settings.durability)
        self._register(group)
        if script_status(reply) == "EXISTS":
            if exist_ok:
                return False
            raise ConfigError(f"group {group!r} already exists; use alter to change it")
        return True

    def _register(self, group: str) -> None:
        # Another slot than the group's keys: not part of the script, idempotent instead.
        try:
            self.client.sadd(self.keys.groups, group)
        except rex.RedisError as err:
            raise translate(err, f"registering group {group}") from err

    def get_settings(self, group: str) -> GroupSettings:
        """The group's stored settings; UnknownGroupError if it does not exist."""
        validate_name(group, "group")
        try:
            raw = self.client.hgetall(self.keys.group_cfg(group))
        except rex.RedisError as err:
            raise translate(err, f"reading group {group}") from err
        if not raw:
            raise UnknownGroupError(f"group {group!r} does not exist")
        return settings_from_reply(raw)

    def alter(self, group: str, **changes: Any) -> GroupSettings:
        """Change some settings (validated with the rest); a new assignor triggers a rebalance."""
        current = self.get_settings(group)
        updated = current.with_changes(**changes)
        self._admin(group, "alter", *updated.to_fields(), durability=updated.durability)
        return updated

    def describe(self, group: str) -> GroupDescription:
        """One consistent snapshot of the group; UnknownGroupError if it does not exist."""
        validate_name(group, "group")
        return parse_describe(self._admin(group, "describe"), group)

    def list(self) -> list[str]:
        """Names of the existing groups, sorted."""
        try:
            names = sorted(text(n) for n in self.client.smembers(self.keys.groups))
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.exists(self.keys.group_cfg(name))
            exists = pipe.execute()
        except rex.RedisError as err:
            raise translate(err, "listing groups") from err
        return [name for name, ok in zip(names, exists, strict=True) if ok]

    def delete(self, group: str, *, force: bool = False) -> bool:
        """Delete the group: its coordinator state, and on every partition of its topics its
        stream consumer group (positions and pending entries), its marks and its fence, so a
        group re-created under the same name starts afresh, as after Kafka's delete-group.
        Refuses while live members remain unless forced. False if the group did not exist.
        """
        validate_name(group, "group")
        topics = self._topics(group)
        reply: list[Any] = self.functions.call(
            "admin", self.keys.group_keys(group), ["delete", "1" if force else "0"]
        )
        code = error_code(reply)
        if code == "UNKNOWN_GROUP":
            self._unregister(group)
            return False
        if code == "NOT_EMPTY":
            raise ConfigError(
                f"group {group!r} still has live members; stop them or use force=True"
            )
        raise_for_status(reply, group)
        self._drop_partition_state(group, topics)
        self._unregister(group)
        return int(reply[1]) > 0

    def _topics(self, group: str) -> dict[str, int]:
        """{topic: partitions} the group's members subscribed to (from its state hash)."""
        try:
            raw = self.client.hgetall(self.keys.group_state(group))
        except rex.RedisError as err:
            raise translate(err, f"reading group {group}") from err
        return group_topics(raw)

    def _drop_partition_state(self, group: str, topics: dict[str, int]) -> None:
        # Each command touches one partition's keys: fine on a cluster (no multi-slot call).
        pipe = self.client.pipeline(transaction=False)
        for topic, count in topics.items():
            for p in range(count):
                pipe.execute_command("XGROUP", "DESTROY", self.keys.stream(topic, p), group)
                pipe.hdel(self.keys.stream_groups(topic, p), group, f"{group}:reclaim")
                pipe.hdel(self.keys.fence(topic, p), group)
        try:
            pipe.execute(raise_on_error=False)  # a partition never written has no stream
        except rex.RedisError as err:
            raise translate(err, f"deleting group {group} from its partitions") from err

    def _unregister(self, group: str) -> None:
        try:
            self.client.srem(self.keys.groups, group)
        except rex.RedisError as err:
            raise translate(err, f"unregistering group {group}") from err
