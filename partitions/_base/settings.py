"""Group settings: stored with the group, the same for every member.

Declared under ``[groups.NAME]`` in the TOML config (:meth:`GroupSettings.from_dict`), set by
``partstream group create|alter``, or brought by the first member that joins an undeclared
group. Once a group exists its stored settings win over any member's.

They live in the base layer because both planes read them (the consumer its ``max_deliveries``
and ``reclaim_idle_ms``, the coordinator the rest); the assignors themselves are the control
plane's (``coordinator.assignors`` registers one under each of :data:`ASSIGNOR_NAMES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from partitions._base.durability import Durability, check_settings, parse_acks
from partitions._base.errors import ConfigError

_INT_FIELDS = (
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "max_deliveries",
    "reclaim_idle_ms",
    "min_insync_replicas",
)
# The assignors coordinator.assignors registers ("uniform" is sticky); a unit test checks that
# the registry and this list agree.
ASSIGNOR_NAMES = ("range", "roundrobin", "uniform")
DEFAULT_ASSIGNOR = "uniform"
# Below this a session would expire between two scheduler ticks of a busy test machine.
MIN_SESSION_TIMEOUT_MS = 100


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """How a consumer group shares partitions and treats slow or poison entries. Immutable."""

    # Assignor computing the target assignment: "uniform" (sticky), "range", "roundrobin".
    assignor: str = DEFAULT_ASSIGNOR
    # A member silent this long (server time) is evicted and its partitions move.
    session_timeout_ms: int = 30_000
    # How often members heartbeat; must be below a third of the session timeout.
    heartbeat_interval_ms: int = 3_000
    # An entry delivered more often than this goes to the dead-letter stream.
    max_deliveries: int = 5
    # A pending entry idle this long is reclaimed from a stuck consumer.
    reclaim_idle_ms: int = 60_000
    # Durability of the group's writes (membership, grants, fences and commits), like the
    # producer's: 1 = the primary applied it; "all" = WAIT for min_insync_replicas replicas
    # before a member relies on it, so a failover keeps the group's state; fsync "local" /
    # "replicas" = WAITAOF too (see partitions._base.durability).
    acks: int | str = 1
    min_insync_replicas: int = 1
    fsync: str = "none"

    def __post_init__(self) -> None:
        if self.assignor not in ASSIGNOR_NAMES:
            known = ", ".join(ASSIGNOR_NAMES)
            raise ConfigError(f"unknown assignor {self.assignor!r}; known assignors: {known}")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.session_timeout_ms < MIN_SESSION_TIMEOUT_MS:
            raise ConfigError(
                f"session_timeout_ms must be at least {MIN_SESSION_TIMEOUT_MS}, "
                f"got {self.session_timeout_ms}"
            )
        check_settings(self.acks, self.min_insync_replicas, self.fsync)
        if self.heartbeat_interval_ms * 3 >= self.session_timeout_ms:
            raise ConfigError(
                "heartbeat interval must be below a third of the session timeout "
                f"(heartbeat_interval_ms={self.heartbeat_interval_ms}, "
                f"session_timeout_ms={self.session_timeout_ms})"
            )

    @property
    def durability(self) -> Durability:
        """What the coordinator waits for after writing this group's state."""
        return Durability(self.acks, self.min_insync_replicas, self.fsync)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupSettings:
        """Build from a TOML table such as ``[groups.NAME]``; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown group setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if "acks" in values:
            values["acks"] = parse_acks(values["acks"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML friendly)."""
        return asdict(self)

    def with_changes(self, **changes: Any) -> GroupSettings:
        """A copy with some fields changed (validated again); unknown names are a ConfigError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown group setting(s) {', '.join(unknown)}")
        if "acks" in changes:
            changes["acks"] = parse_acks(changes["acks"])
        return replace(self, **changes)

    def to_fields(self) -> list[str]:
        """Flat ``[name, value, ...]`` for the group's cfg hash (HSET order)."""
        out: list[str] = []
        for name, value in self.to_dict().items():
            out += [name, str(value)]
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> GroupSettings:
        """Inverse of :meth:`to_fields`, from the decoded cfg hash (see
        :func:`partitions._base.replies.settings_from_reply`); unknown fields are ignored."""
        values: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for k, v in raw.items():
            if k not in names:
                continue  # written by a newer version: keep working
            values[k] = int(v) if k in _INT_FIELDS else parse_acks(v) if k == "acks" else v
        return cls(**values)
