"""Topics: metadata kept in Redis so every client agrees on it, and their administration.

A topic is N partition streams plus a metadata hash (see :mod:`partitions._base.keys`):
partition count, routing, retention (by length and/or age), region ranges, creation time, a
version that every change bumps, and each partition's hash-tag suffix (``tags``: chosen at
creation, and for new partitions at growth, so the partitions sit on evenly spaced cluster
slots; see :mod:`partitions._base.slots`). Every key of a partition is derived from that
metadata (:attr:`TopicMeta.layout`), so all clients name the same keys; a topic stored
without ``tags`` (created before them) keeps its original keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.exceptions as rex

from partitions._base.errors import (
    ConfigError,
    ConflictError,
    TopicExistsError,
    UnknownTopicError,
    WrongTypeError,
    translate,
)
from partitions._base.failover import repeatable_steps
from partitions._base.keys import TopicLayout, validate_name
from partitions._base.replies import StreamInfo, stream_info_from_reply, string_map, text
from partitions._client.connection import Connection
from partitions._producer.router import ROUTINGS, Router, validate_regions

MAX_PARTITIONS = 4096


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic should look like: the input of create, alter and ``apply``."""

    name: str
    partitions: int
    # Keep at most about this many records per partition (MAXLEN ~); None = unbounded.
    max_length: int | None = None
    # Drop records older than this many ms (MINID ~, by server time); None = forever.
    retention_ms: int | None = None
    # Never trim records some group has not yet delivered or acked.
    safe_retention: bool = False
    routing: str = "modulo"
    # region -> (first, last) partition range, inclusive.
    regions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name(self.name, "topic")
        if isinstance(self.partitions, bool) or not isinstance(self.partitions, int):
            raise ConfigError(f"topic {self.name}: partitions must be an integer")
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"topic {self.name}: partitions must be 1..{MAX_PARTITIONS}")
        for label, val in (("max_length", self.max_length), ("retention_ms", self.retention_ms)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val <= 0):
                raise ConfigError(f"topic {self.name}: {label} must be a positive integer")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"topic {self.name}: routing must be one of {', '.join(ROUTINGS)}")
        regions = (
            {k: (int(v[0]), int(v[1])) for k, v in self.regions.items()} if self.regions else {}
        )
        validate_regions(regions, self.partitions)
        object.__setattr__(self, "regions", regions)

    def router(self) -> Router:
        return Router(self.partitions, self.routing, self.regions)

    def to_fields(self) -> list[Any]:
        return [
            "partitions", self.partitions,
            "max_length", self.max_length or 0,
            "retention_ms", self.retention_ms or 0,
            "safe_retention", int(self.safe_retention),
            "routing", self.routing,
            "regions", orjson.dumps({k: list(v) for k, v in self.regions.items()}),
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "max_length": self.max_length,
            "retention_ms": self.retention_ms,
            "safe_retention": self.safe_retention,
            "routing": self.routing,
            "regions": {k: list(v) for k, v in self.regions.items()},
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> TopicSpec:
        """From a TOML ``[topics.NAME]`` table; unknown keys are a ConfigError."""
        allowed = {
            "partitions",
            "max_length",
            "retention_ms",
            "safe_retention",
            "routing",
            "regions",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(
                f"[topics.{name}]: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(allowed))}"
            )
        if "partitions" not in data:
            raise ConfigError(f"[topics.{name}]: 'partitions' is required")
        regions = data.get("regions") or {}
        if not isinstance(regions, Mapping):
            raise ConfigError(f"[topics.{name}]: regions must be a table of name = [first, last]")
        return cls(
            name=name,
            partitions=data["partitions"],
            max_length=data.get("max_length"),
            retention_ms=data.get("retention_ms"),
            safe_retention=bool(data.get("safe_retention", False)),
            routing=data.get("routing", "modulo"),
            regions={k: tuple(v) for k, v in regions.items()},
        )


@dataclass(frozen=True, slots=True)
class TopicMeta:
    """A topic as stored: its spec plus creation time and version."""

    spec: TopicSpec
    created_ms: int
    version: int
    # Each partition's hash-tag suffix as stored ("" or none: the original tag <topic>:<p>).
    tags: tuple[str, ...] = ()
    _layout: TopicLayout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built (and its suffixes checked) once: every key of the topic is named from it.
        object.__setattr__(
            self, "_layout", TopicLayout(self.spec.name, self.spec.partitions, self.tags)
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partitions(self) -> int:
        return self.spec.partitions

    @property
    def layout(self) -> TopicLayout:
        """How the partitions' keys are named: pass it to :class:`~partitions._base.keys.Keys`."""
        return self._layout


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition in ``topic describe``."""

    partition: int
    length: int
    first_id: str | None
    last_id: str | None
    first_timestamp: int | None
    last_timestamp: int | None
    node: str | None = None
    entries_added: int | None = None  # ever appended (a produce counter: trims keep it)
    slot: int | None = None  # the cluster slot of the partition's keys

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "length": self.length,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "node": self.node,
            "entries_added": self.entries_added,
            "slot": self.slot,
        }


@dataclass(frozen=True, slots=True)
class TopicDescription:
    meta: TopicMeta
    partitions: list[PartitionInfo]

    @property
    def length(self) -> int:
        return sum(p.length for p in self.partitions)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.meta.spec.to_dict(),
            "created_ms": self.meta.created_ms,
            "version": self.meta.version,
            "tags": list(self.meta.tags),
            "length": self.length,
            "partitions": [p.to_dict() for p in self.partitions],
        }


def _opt_int(value: int | bool | None) -> int | None:
    return None if value is None else int(value)


def existing_meta(name: str, raw: Mapping[Any, Any]) -> TopicMeta:
    """The topic's metadata from its hash as read (HGETALL); UnknownTopicError if empty."""
    if not raw:
        raise UnknownTopicError(
            f"topic {name} does not exist (create it with `partstream topic create`)"
        )
    return meta_from_hash(name, raw)


def meta_read(conn: Any, name: str) -> Any:
    """The steps of reading topic ``name``'s metadata hash (HGETALL), riding out a failover
    (a read: safe to repeat); both shells run them with their ``functions.run``."""
    validate_name(name, "topic")
    key = conn.keys.topic_meta(name)
    return repeatable_steps(conn.client, lambda: conn.client.hgetall(key))


async def read_meta_async(conn: Any, name: str) -> TopicMeta:
    """:meth:`TopicAdmin.get` on an :class:`~partitions._client.aio.AsyncConnection`."""
    try:
        raw = await conn.functions.run(meta_read(conn, name))
    except (rex.RedisError, rex.RedisClusterException) as err:
        raise translate(err, f"reading topic {name}") from err
    return existing_meta(name, raw)


def read_layouts(conn: Connection, counts: Mapping[str, int]) -> dict[str, TopicLayout]:
    """The key layouts of ``counts``'s topics ({topic: partitions}, e.g. a group's), read
    from their metadata in one round. A topic without metadata (deleted) has the original
    tags; a count above the metadata's covers the extra partitions with them too."""
    names = sorted(counts)
    keys = [conn.keys.topic_meta(validate_name(name, "topic")) for name in names]

    def read() -> list[Any]:
        pipe = conn.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return list(pipe.execute()) if keys else []

    try:  # reads only: they ride out a failover
        raws = conn.functions.run(repeatable_steps(conn.client, read))
    except (rex.RedisError, rex.RedisClusterException) as err:
        raise translate(err, "reading topics") from err
    out = {}
    for name, raw in zip(names, raws, strict=True):
        tags = meta_from_hash(name, raw).tags if raw else ()
        n = max(counts[name], int(string_map(raw).get("partitions", 0)) if raw else 0, 1)
        out[name] = TopicLayout(name, n, tags)
    return out


def meta_from_hash(name: str, raw: Mapping[Any, Any]) -> TopicMeta:
    data = string_map(raw)
    regions = orjson.loads(data.get("regions") or "{}")
    spec = TopicSpec(
        name=name,
        partitions=int(data["partitions"]),
        max_length=int(data.get("max_length") or 0) or None,
        retention_ms=int(data.get("retention_ms") or 0) or None,
        safe_retention=data.get("safe_retention") == "1",
        routing=data.get("routing", "modulo"),
        regions={k: (v[0], v[1]) for k, v in regions.items()},
    )
    layout = TopicLayout.from_field(name, spec.partitions, data.get("tags"))
    return TopicMeta(spec, int(data.get("created_ms", 0)), int(data.get("version", 1)), layout.tags)


class TopicAdmin:
    """Create, inspect, change and delete topics. Thread-safe (stateless over a Connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.keys = conn.keys
        self._r = conn.client

    def create(self, spec: TopicSpec, *, exist_ok: bool = False) -> TopicMeta:
        """Create a topic. Checks that no key it needs holds another type first.

        Its partitions get hash tags on evenly spaced cluster slots
        (:meth:`TopicLayout.spread`), recorded in its metadata. With ``exist_ok``, an
        existing topic is returned as it is (its own tags)."""
        layout = TopicLayout.spread(spec.name, spec.partitions)
        self._check_types(layout, range(spec.partitions))
        created = self.conn.functions.call(
            "topic_create",
            [self.keys.topic_meta(spec.name)],
            [*spec.to_fields(), "tags", layout.field],
            f"creating topic {spec.name}",
        )
        if not created and not exist_ok:
            raise TopicExistsError(f"topic {spec.name} already exists")
        self._call(lambda: self._r.sadd(self.keys.topics, spec.name), "registering topic")
        return self.get(spec.name)

    def get(self, name: str) -> TopicMeta:
        """The topic's metadata; UnknownTopicError if it does not exist."""
        try:
            raw = self.conn.functions.run(meta_read(self.conn, name))
        except (rex.RedisError, rex.RedisClusterException) as err:
            raise translate(err, f"reading topic {name}") from err
        return existing_meta(name, raw)

    def exists(self, name: str) -> bool:
        validate_name(name, "topic")
        return bool(
            self._call(lambda: self._r.exists(self.keys.topic_meta(name)), "checking topic")
        )

    def names(self) -> list[str]:
        names = self._call(lambda: self._r.smembers(self.keys.topics), "listing topics")
        return sorted(text(n) for n in names)

    def stream_info(
        self, layout: TopicLayout, partitions: Sequence[int]
    ) -> list[StreamInfo | None]:
        """XINFO STREAM for each partition (None where the stream does not exist yet)."""
        name = layout.topic
        pipe = self._r.pipeline(transaction=False)
        for p in partitions:
            pipe.execute_command("XINFO", "STREAM", self.keys.stream(layout, p))
        replies = self._call(lambda: pipe.execute(raise_on_error=False), f"describing {name}")
        out: list[StreamInfo | None] = []
        for reply in replies:
            if isinstance(reply, Exception):
                if "no such key" in str(reply).lower():
                    out.append(None)
                    continue
                raise translate(reply, f"describing {name}")
            out.append(stream_info_from_reply(reply))
        return out

    def describe(self, name: str) -> TopicDescription:
        meta = self.get(name)
        layout = meta.layout
        parts = range(meta.partitions)
        infos = self.stream_info(layout, parts)
        out = []
        for p, info in zip(parts, infos, strict=True):
            node = self._node_of(self.keys.stream(layout, p))
            slot = layout.slot(p)
            if info is None:
                out.append(PartitionInfo(p, 0, None, None, None, None, node, slot=slot))
            else:
                out.append(
                    PartitionInfo(
                        p,
                        info.length,
                        info.first_id,
                        info.last_id,
                        info.first_timestamp,
                        info.last_timestamp,
                        node,
                        info.entries_added,
                        slot,
                    )
                )
        return TopicDescription(meta, out)

    def alter(
        self,
        name: str,
        *,
        partitions: int | None = None,
        max_length: int | bool | None = False,
        retention_ms: int | bool | None = False,
        safe_retention: bool | None = None,
        regions: Mapping[str, tuple[int, int]] | None = None,
        routing: str | None = None,
    ) -> TopicMeta:
        """Grow partitions and/or change retention, regions or routing. For the limits,
        ``False`` = leave unchanged and ``None`` = remove. Shrinking is refused (records would
        be lost). A new routing or new regions move keys to other partitions: per-key order
        then holds only once consumers drained the old partitions. New partitions get hash
        tags on the slots farthest from the existing ones (:meth:`TopicLayout.grown`);
        existing partitions keep theirs."""
        meta = self.get(name)
        spec = meta.spec
        if partitions is not None and partitions < spec.partitions:
            raise ConfigError(
                f"topic {name} has {spec.partitions} partitions; a topic cannot shrink "
                "(records in removed partitions would be lost)"
            )
        new = TopicSpec(
            name=name,
            partitions=spec.partitions if partitions is None else partitions,
            max_length=spec.max_length if max_length is False else _opt_int(max_length),
            retention_ms=spec.retention_ms if retention_ms is False else _opt_int(retention_ms),
            safe_retention=spec.safe_retention if safe_retention is None else safe_retention,
            routing=spec.routing if routing is None else routing,
            regions=spec.regions if regions is None else regions,
        )
        layout = meta.layout.grown(new.partitions)
        self._check_types(layout, range(spec.partitions, new.partitions))
        tags = ["tags", layout.field] if layout.spread_out else []
        try:
            self.conn.functions.call(
                "topic_alter",
                [self.keys.topic_meta(name)],
                [str(meta.version), *new.to_fields(), *tags],
                f"altering {name}",
            )
        except Exception as err:
            if "STALE" in str(err):
                raise ConflictError(
                    f"topic {name} changed concurrently; retry", retriable=True
                ) from err
            raise
        return self.get(name)

    def trim(
        self, name: str, partition: int, *, max_length: int | None = None, min_id: str | None = None
    ) -> int:
        """Trim one partition now, exactly (XTRIM MAXLEN / MINID); returns entries removed.

        Entries some group has not acked yet are removed too: their ids reach that group's
        dead-letter stream with reason ``trimmed`` when they are reclaimed.
        """
        meta = self.get(name)
        if not 0 <= partition < meta.partitions:
            raise ConfigError(
                f"topic {name} has partitions 0..{meta.partitions - 1}, not {partition}"
            )
        if (max_length is None) == (min_id is None):
            raise ConfigError("trim needs exactly one of max_length and min_id")
        if max_length is not None and max_length < 0:
            raise ConfigError("max_length must be >= 0")
        key = self.keys.stream(meta.layout, partition)
        args = ["MAXLEN", max_length] if max_length is not None else ["MINID", min_id]
        return int(
            self._call(lambda: self._r.execute_command("XTRIM", key, *args), f"trimming {key}")
        )

    def delete(self, name: str) -> bool:
        """Delete the topic, its partitions, fences and dead letters. False if absent."""
        try:
            meta = self.get(name)
        except UnknownTopicError:
            return False
        pipe = self._r.pipeline(transaction=False)
        for p in range(meta.partitions):
            for key in self.keys.partition_keys(meta.layout, p):
                pipe.delete(key)
        pipe.delete(self.keys.topic_meta(name))
        pipe.srem(self.keys.topics, name)
        self._call(pipe.execute, f"deleting {name}")
        return True

    # -- helpers --------------------------------------------------------------------------
    def _check_types(self, layout: TopicLayout, partitions: range) -> None:
        name = layout.topic
        keys = [self.keys.topic_meta(name)]
        for p in partitions:
            keys += [self.keys.stream(layout, p), self.keys.dlq(layout, p)]
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        types = self._call(pipe.execute, f"checking keys of {name}")
        expected = ["hash"] + ["stream", "stream"] * len(partitions)
        for key, typ, want in zip(keys, types, expected, strict=True):
            typ = text(typ)
            if typ not in ("none", want):
                raise WrongTypeError(
                    f"key {key} holds a {typ}, not a {want}: something else wrote it; "
                    "rename or delete it, or use another namespace"
                )

    def _node_of(self, key: str) -> str | None:
        if not self.conn.is_cluster:
            return None
        node = self._r.get_node_from_key(key)
        return f"{node.host}:{node.port}"

    @staticmethod
    def _call(fn: Any, context: str) -> Any:
        try:
            return fn()
        except rex.RedisError as err:
            raise translate(err, context) from err
