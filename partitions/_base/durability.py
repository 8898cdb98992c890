"""Durability of a write, like Kafka's ``acks``: when may a caller treat it as safe?

* ``acks=1`` (the default): the primary applied it. Redis replicates asynchronously, so a
  failover can lose what the primary acknowledged but had not yet sent to a replica.
* ``acks="all"``: after the write, ``WAIT min_insync_replicas <timeout>`` on the same
  connection must report at least ``min_insync_replicas`` replicas that have it; otherwise the
  write is in doubt (applied on the primary, maybe lost in a failover) and the caller gets
  :class:`~partitions._base.errors.NotEnoughReplicasError`.
* ``fsync``: where the server has ``WAITAOF`` (Redis >= 7.2, Valkey), also wait until the
  write is in an fsynced AOF: ``"local"`` on the primary, ``"replicas"`` on the primary and on
  ``min_insync_replicas`` replicas (needs ``acks="all"``). On a server without ``WAITAOF``
  (Redis 7.0) only ``WAIT`` applies, and a warning says so once.

One :class:`Durability` is shared by the producer (its batches) and the coordinator (group
state, fences and commits of a group). The commands go in the same pipeline as the writes
they cover, since ``WAIT``/``WAITAOF`` only count what their own connection wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from partitions._base.errors import ConfigError, NotEnoughReplicasError, ServerError

log = logging.getLogger("partstream")

ACKS = (1, "all")
FSYNC = ("none", "local", "replicas")
_warned_no_waitaof = False


def parse_acks(value: object) -> int | str:
    """``1`` / ``"1"`` / ``"all"`` (also ``-1``, Kafka's spelling of all) as 1 or "all"."""
    if isinstance(value, bool):
        raise ConfigError(f"acks must be 1 or 'all', got {value!r}")
    if value in (1, "1"):
        return 1
    if value in ("all", "-1", -1):
        return "all"
    raise ConfigError(f"acks must be 1 or 'all', got {value!r}")


def check_settings(acks: object, min_insync_replicas: object, fsync: object) -> None:
    """The cross-field checks every config that carries these three settings makes."""
    if isinstance(acks, bool) or acks not in ACKS:
        raise ConfigError(f"acks must be 1 or 'all', got {acks!r}")
    if (
        isinstance(min_insync_replicas, bool)
        or not isinstance(min_insync_replicas, int)
        or not 1 <= min_insync_replicas <= 16
    ):
        raise ConfigError(f"min_insync_replicas must be 1..16, got {min_insync_replicas!r}")
    if fsync not in FSYNC:
        raise ConfigError(f"fsync must be one of {', '.join(FSYNC)}, got {fsync!r}")
    if fsync == "replicas" and acks != "all":
        raise ConfigError("fsync='replicas' waits for replicas: it needs acks='all'")


@dataclass(frozen=True, slots=True)
class Durability:
    """What to wait for after a write (see the module docstring)."""

    acks: int | str = 1
    min_insync_replicas: int = 1
    fsync: str = "none"

    def __post_init__(self) -> None:
        check_settings(self.acks, self.min_insync_replicas, self.fsync)

    @property
    def waits(self) -> bool:
        """False for ``acks=1`` without fsync: nothing to send after the write."""
        return self.acks == "all" or self.fsync != "none"

    def commands(self, timeout_ms: int) -> list[tuple[Any, ...]]:
        """The commands to pipeline right after the writes (none for acks=1, no fsync)."""
        timeout = max(1, int(timeout_ms))
        out: list[tuple[Any, ...]] = []
        if self.fsync == "replicas":
            # One WAITAOF covers both: a replica that fsynced the write has it.
            out.append(("WAITAOF", 1, self.min_insync_replicas, timeout))
            out.append(("WAIT", self.min_insync_replicas, timeout))  # the fallback, if no AOF
            return out
        if self.acks == "all":
            out.append(("WAIT", self.min_insync_replicas, timeout))
        if self.fsync == "local":
            out.append(("WAITAOF", 1, 0, timeout))
        return out

    def check(self, replies: list[Any], what: str) -> None:
        """Raise NotEnoughReplicasError unless ``replies`` (of :meth:`commands`) confirm it."""
        commands = self.commands(1)
        have_waitaof = True
        for cmd, reply in zip(commands, replies, strict=True):
            if cmd[0] == "WAITAOF" and isinstance(reply, Exception):
                if "unknown command" not in str(reply).lower():
                    raise ServerError(
                        f"{what}: the server refused WAITAOF ({reply}); fsync={self.fsync!r} "
                        "needs appendonly yes (on the replicas too for 'replicas')"
                    )
                have_waitaof = False
                _warn_no_waitaof()
        for cmd, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                if cmd[0] == "WAITAOF":
                    continue
                raise NotEnoughReplicasError(f"{what}: {cmd[0]} failed: {reply}")
            if cmd[0] == "WAIT":
                if self.fsync == "replicas" and have_waitaof:
                    continue  # WAITAOF decided
                if int(reply) < self.min_insync_replicas:
                    raise NotEnoughReplicasError(
                        f"{what}: only {int(reply)} of the {self.min_insync_replicas} "
                        "replica(s) acks='all' needs confirmed the write in time; it is on "
                        "the primary and may or may not survive a failover"
                    )
            else:
                local, replicas = int(reply[0]), int(reply[1])
                need = int(cmd[2])
                if local < 1 or replicas < need:
                    raise NotEnoughReplicasError(
                        f"{what}: the write reached the AOF on {local} primary and {replicas} "
                        f"replica(s) in time, {need} replica(s) needed (fsync={self.fsync!r}); "
                        "it is applied and may or may not survive a crash"
                    )


def _warn_no_waitaof() -> None:
    global _warned_no_waitaof
    if not _warned_no_waitaof:
        _warned_no_waitaof = True
        log.warning(
            "this server has no WAITAOF (Redis < 7.2): fsync is not waited for, only "
            "replication (WAIT)"
        )


NONE = Durability()

__all__ = ["ACKS", "FSYNC", "NONE", "Durability", "check_settings", "parse_acks"]
