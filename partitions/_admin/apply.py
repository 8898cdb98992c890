"""Declarative setup: topics and groups declared in TOML, applied idempotently.

A config file has two kinds of tables::

    [topics.orders]
    partitions = 8
    retention_ms = 604800000      # optional: drop records older than 7 days
    max_length = 1000000          # optional: keep about this many per partition
    routing = "modulo"            # or "jump"
    regions = { eu = [0, 3], us = [4, 7] }

    [groups.billing]
    session_timeout_ms = 30000
    heartbeat_interval_ms = 3000
    max_deliveries = 5

    [consumer]                    # client settings, read by `partstream consume --config`
    max_poll_interval_ms = 300000

    [producer]                    # read by `partstream produce --config`
    acks = "all"

    [client]                      # the server, for both (flags and PARTSTREAM_* win)
    url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/orders"

:func:`plan` compares the file with the server and :func:`execute` carries the plan out:
what is missing is created, safe differences (more partitions, retention, group settings) are
changed, and destructive ones (fewer partitions, another routing, moved regions) are refused
unless forced. Every table is validated before anything is written. The ``[consumer]``,
``[producer]`` and ``[client]`` tables hold :class:`~partitions._client.config.ConsumerConfig`,
:class:`~partitions._client.config.ProducerConfig` and
:class:`~partitions._client.config.ClientConfig` fields: they are validated here but apply
to client processes, not to the server.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partitions._admin.groups import GroupAdmin
from partitions._admin.library import load_library
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import ConfigError, UnknownGroupError, UnknownTopicError
from partitions._base.keys import validate_name
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection


@dataclass(frozen=True, slots=True)
class Declared:
    """The validated content of one config file."""

    topics: dict[str, TopicSpec] = field(default_factory=dict)
    groups: dict[str, GroupSettings] = field(default_factory=dict)
    consumer: ConsumerConfig | None = None  # the [consumer] table, if the file has one
    producer: ProducerConfig | None = None  # the [producer] table, if the file has one
    client: ClientConfig | None = None  # the [client] table, if the file has one


@dataclass(frozen=True, slots=True)
class Action:
    """One line of a plan. ``kind``: create, alter, unchanged, or refused."""

    kind: str
    target: str  # "topic orders" / "group billing"
    detail: str = ""
    changes: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind:<9} {self.target}" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.kind, "target": self.target, "detail": self.detail}


def load(path: str | Path) -> Declared:
    """Read and validate a TOML config file (nothing is sent to a server)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    return parse(data, str(path))


def parse(data: Mapping[str, Any], source: str = "config") -> Declared:
    unknown = sorted(set(data) - {"topics", "groups", "consumer", "producer", "client"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown table(s) {', '.join(unknown)}; use [topics.*], [groups.*], "
            "[consumer], [producer] and [client]"
        )
    topics: dict[str, TopicSpec] = {}
    for name, table in _tables(data, "topics", source).items():
        topics[name] = TopicSpec.from_dict(validate_name(name, "topic"), table)
    groups: dict[str, GroupSettings] = {}
    for name, table in _tables(data, "groups", source).items():
        validate_name(name, "group")
        try:
            groups[name] = GroupSettings.from_dict(table)
        except ConfigError as err:
            raise ConfigError(f"{source}: [groups.{name}]: {err}") from None
    consumer = None
    if "consumer" in data:
        consumer = ConsumerConfig.from_dict(data["consumer"], f"{source}: [consumer]")
    producer = None
    if "producer" in data:
        producer = ProducerConfig.from_dict(data["producer"], f"{source}: [producer]")
    client = None
    if "client" in data:
        client = ClientConfig.from_dict(data["client"], f"{source}: [client]")
    return Declared(topics, groups, consumer, producer, client)


def _tables(data: Mapping[str, Any], section: str, source: str) -> dict[str, Mapping[str, Any]]:
    raw = data.get(section, {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [{section}] must be a table of tables")
    for name, table in raw.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [{section}.{name}] must be a table")
    return dict(raw)


def plan(conn: Connection, declared: Declared) -> list[Action]:
    """What :func:`execute` would do. Reads the server, writes nothing."""
    actions: list[Action] = []
    topics = TopicAdmin(conn)
    for name, spec in sorted(declared.topics.items()):
        target = f"topic {name}"
        try:
            current = topics.get(name).spec
        except UnknownTopicError:
            actions.append(Action("create", target, f"{spec.partitions} partitions"))
            continue
        refused, changes = _topic_diff(current, spec)
        if refused:
            actions.append(Action("refused", target, "; ".join(refused), changes))
        elif changes:
            detail = ", ".join(f"{k} {getattr(current, k)} -> {v}" for k, v in changes.items())
            actions.append(Action("alter", target, detail, changes))
        else:
            actions.append(Action("unchanged", target))
    groups = GroupAdmin(conn)
    for name, settings in sorted(declared.groups.items()):
        target = f"group {name}"
        try:
            current_g = groups.get_settings(name)
        except UnknownGroupError:
            actions.append(Action("create", target, f"assignor {settings.assignor}"))
            continue
        now, want = current_g.to_dict(), settings.to_dict()
        diff = {k: v for k, v in want.items() if now.get(k) != v}
        if diff:
            detail = ", ".join(f"{k} {now.get(k)} -> {v}" for k, v in diff.items())
            actions.append(Action("alter", target, detail, diff))
        else:
            actions.append(Action("unchanged", target))
    return actions


def _topic_diff(current: TopicSpec, want: TopicSpec) -> tuple[list[str], dict[str, Any]]:
    refused: list[str] = []
    changes: dict[str, Any] = {}
    if want.partitions < current.partitions:
        refused.append(
            f"partitions {current.partitions} -> {want.partitions} would lose records "
            "(never applied, even with --force)"
        )
    elif want.partitions > current.partitions:
        changes["partitions"] = want.partitions
    if want.routing != current.routing:
        refused.append(f"routing {current.routing} -> {want.routing} would move keys")
        changes["routing"] = want.routing
    if dict(want.regions) != dict(current.regions):
        refused.append("regions changed: keys would move between partitions")
        changes["regions"] = dict(want.regions)
    for name in ("max_length", "retention_ms", "safe_retention"):
        if getattr(want, name) != getattr(current, name):
            changes[name] = getattr(want, name)
    return refused, changes


def execute(conn: Connection, declared: Declared, *, force: bool = False) -> list[Action]:
    """Carry out the plan. Refused actions raise ConfigError before anything is written,
    unless ``force``; then they are applied too (routing and regions are rewritten).

    It also loads this version's server-side library on every primary that lacks it (an
    admin's act: producers and consumers may not load it themselves)."""
    actions = plan(conn, declared)
    refused = [a for a in actions if a.kind == "refused"]
    if refused and not force:
        raise ConfigError(
            "refusing destructive change(s): "
            + "; ".join(f"{a.target}: {a.detail}" for a in refused)
            + " (use --force to apply anyway)"
        )
    load_library(conn)
    topics = TopicAdmin(conn)
    groups = GroupAdmin(conn)
    for action in actions:
        kind, name = action.target.split(" ", 1)
        if action.kind == "create" and kind == "topic":
            topics.create(declared.topics[name], exist_ok=True)
        elif action.kind == "create":
            groups.create(name, declared.groups[name], exist_ok=True)
        elif action.kind in ("alter", "refused") and kind == "topic":
            spec = declared.topics[name]
            topics.alter(
                name,
                partitions=spec.partitions if "partitions" in action.changes else None,
                max_length=spec.max_length,
                retention_ms=spec.retention_ms,
                safe_retention=spec.safe_retention,
                regions=spec.regions,
                routing=spec.routing,
            )
        elif action.kind == "alter":
            groups.alter(name, **action.changes)
    return actions
