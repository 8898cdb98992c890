"""What the threaded :class:`~partitions.Consumer` and the :class:`~partitions.AsyncConsumer`
share besides their flow: the checks of their arguments and the accessors of their state,
none of which does I/O (so neither is written twice)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from partitions._base.errors import ClosedError, ConfigError, ConnectionFailedError
from partitions._base.keys import validate_name
from partitions._base.settings import GroupSettings
from partitions._client.config import ConsumerConfig
from partitions._consumer.assignment import Assignment
from partitions._consumer.flow import ConsumerFlow, current_settings


class ConsumerShell:
    """The part of a consumer that is the same in both shells."""

    config: ConsumerConfig
    group: str
    topics: tuple[str, ...]
    member_id: str
    assignment_state: Assignment
    _flow: ConsumerFlow
    _member: Any
    _runner: Any
    _closed: bool

    def _arguments(
        self, group: str, topics: str | Iterable[str], config: ConsumerConfig | None
    ) -> None:
        """Check what the constructor was given (typed errors before anything is sent; the
        shell then checks ``config`` against its connection's)."""
        self.config = config or ConsumerConfig()
        self.group = validate_name(group, "group")
        names = [topics] if isinstance(topics, str) else sorted(set(topics))
        if not names:
            raise ConfigError("a consumer needs at least one topic")
        for name in names:
            validate_name(name, "topic")
        self.topics = tuple(names)
        self._closed = False

    def _state(self) -> ConsumerFlow:
        """The flow, once the consumer runs (ClosedError before)."""
        return self._flow

    def _check_open(self) -> ConsumerFlow:
        """Before a request: ClosedError once closed, the runner's fatal error if it has one."""
        flow = self._state()
        if self._closed:
            raise ClosedError("the consumer is closed")
        if self._runner.fatal is not None:
            raise self._runner.fatal
        return flow

    def fence(self, topic: str, partition: int) -> str | None:
        """The grant (``"<member_id> <token>"``) this consumer reads a partition under."""
        return self._state().a.fence(topic, partition)

    @property
    def group_settings(self) -> GroupSettings:
        """The group's settings as its coordinator state holds them (session timeout,
        max deliveries...), as this member last read them."""
        self._state()
        return current_settings(self._member)

    @property
    def refused_acks(self) -> int:
        """Acks the fence refused because the partition had moved to another member."""
        return self._state().tally.refused_acks

    @property
    def dead_lettered(self) -> int:
        """Records this consumer moved to dead-letter streams."""
        return self._state().tally.dead_lettered

    @property
    def reclaimed(self) -> int:
        """Entries delivered again by reclaim passes (periodic or asked for)."""
        return self._state().tally.reclaimed

    @property
    def last_error(self) -> ConnectionFailedError | None:
        """The last connection failure poll() rode out (None: none yet), for diagnostics."""
        return self._state().last_error


__all__ = ["ConsumerShell"]
