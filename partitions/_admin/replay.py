"""Replay: read a partition or a whole topic from any position, optionally following it.

Reads do not touch consumer groups: replay is the ``XRANGE`` view of a topic, for audits,
debugging and rebuilding state. A whole-topic replay merges partitions in ID (= append time)
order. Positions are ``earliest``, ``latest``, a stream ID (``1700000000000-0``) or a time
(``@1700000000000``, epoch ms; also accepted as an int).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from partitions._admin.topics import TopicAdmin
from partitions._base.errors import ConfigError, translate
from partitions._base.keys import TopicLayout
from partitions._base.records import Record, parse_id
from partitions._base.replies import read_reply_items, records_from_entries, text
from partitions._client.connection import Connection
from partitions._client.nodes import execute_on_key, execute_per_key

PAGE = 500


@dataclass(frozen=True, slots=True)
class Position:
    """A start or end point: ``kind`` is earliest, latest or id (``id`` then holds 'ms-seq')."""

    kind: str
    id: str = ""

    @classmethod
    def parse(cls, text: str | int) -> Position:
        if isinstance(text, int) and not isinstance(text, bool):
            return cls("id", f"{text}-0")
        text = str(text).strip()
        if text in ("earliest", "beginning", "-"):
            return cls("earliest")
        if text in ("latest", "end", "$", "+"):
            return cls("latest")
        raw = text[1:] if text.startswith("@") else text
        try:
            ms, seq = parse_id(raw)
        except ValueError:
            raise ConfigError(
                f"position {text!r}: use earliest, latest, a stream id (1700000000000-0) "
                "or @EPOCH_MS"
            ) from None
        return cls("id", f"{ms}-{seq}")


def _xrange(conn: Connection, key: str, start: str, end: str, count: int) -> list[Any]:
    # A bytes command name skips redis-py's reply parsing: records.py parses the raw entries.
    reply: list[Any] = execute_on_key(
        conn, key, b"XRANGE", key, start, end, "COUNT", count, context=f"reading {key}"
    )
    return reply


def _after(stream_id: str) -> str:
    return "(" + stream_id


def read_partition(
    conn: Connection,
    layout: TopicLayout,
    partition: int,
    start: Position,
    end: Position | None = None,
) -> Iterator[Record]:
    """Records of one partition from ``start`` (inclusive) to ``end`` (inclusive), paged."""
    topic = layout.topic
    key = conn.keys.stream(layout, partition)
    if start.kind == "latest":
        return
    lo = "-" if start.kind == "earliest" else start.id
    hi = "+" if end is None or end.kind == "latest" else end.id
    while True:
        page = _xrange(conn, key, lo, hi, PAGE)
        if not page:
            return
        yield from records_from_entries(topic, partition, page)
        if len(page) < PAGE:
            return
        lo = _after(text(page[-1][0]))


def replay(
    conn: Connection,
    topic: str,
    *,
    partitions: Sequence[int] | None = None,
    start: str | int | Position = "earliest",
    end: str | int | Position | None = None,
    count: int | None = None,
    follow: bool = False,
    block_ms: int = 1000,
    stop: Any = None,
) -> Iterator[Record]:
    """Records of a topic (or some partitions) in append order, then, with ``follow``, new
    ones as they arrive. ``stop`` (an object with ``is_set()``) ends a follow."""
    meta = TopicAdmin(conn).get(topic)
    parts = list(range(meta.partitions)) if partitions is None else list(partitions)
    for p in parts:
        if not 0 <= p < meta.partitions:
            raise ConfigError(f"topic {topic} has partitions 0..{meta.partitions - 1}, not {p}")
    if count is not None and count < 0:
        raise ConfigError("count must be >= 0")
    start_pos = start if isinstance(start, Position) else Position.parse(start)
    end_pos = None if end is None else end if isinstance(end, Position) else Position.parse(end)
    if follow and end_pos is not None:
        raise ConfigError("follow and an end position exclude each other")

    # Where each partition's history ends now, so a follow starts right after it.
    last_ids = _last_ids(conn, meta.layout, parts)
    emitted = 0
    iters = [read_partition(conn, meta.layout, p, start_pos, end_pos) for p in parts]
    for record in heapq.merge(*iters, key=lambda r: parse_id(r.id)):
        if count is not None and emitted >= count:
            return
        yield record
        emitted += 1
        last_ids[record.partition] = max(last_ids[record.partition], record.id, key=parse_id)
    if not follow:
        return
    yield from _follow(
        conn, meta.layout, last_ids, block_ms, stop, None if count is None else count - emitted
    )


def _last_ids(conn: Connection, layout: TopicLayout, parts: list[int]) -> dict[int, str]:
    keys = [conn.keys.stream(layout, p) for p in parts]
    replies = execute_per_key(
        conn,
        [(k, (b"XREVRANGE", k, "+", "-", "COUNT", 1)) for k in keys],
        f"reading {layout.topic}",
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return {p: (text(r[0][0]) if r else "0-0") for p, r in zip(parts, replies, strict=True)}


def _follow(
    conn: Connection,
    layout: TopicLayout,
    last_ids: dict[int, str],
    block_ms: int,
    stop: Any,
    remaining: int | None,
) -> Iterator[Record]:
    topic = layout.topic
    keys = {conn.keys.stream(layout, p): p for p in last_ids}
    while remaining is None or remaining > 0:
        if stop is not None and stop.is_set():
            return
        streams = {k: last_ids[p] for k, p in keys.items()}
        try:
            if conn.is_cluster:
                # Streams of different partitions live in different slots: no multi-key
                # XREAD. Poll them all (one pipeline per node) without blocking, then wait
                # a little if nothing came.
                reply = []
                got = execute_per_key(
                    conn,
                    [
                        (k, (b"XREAD", "COUNT", PAGE, "STREAMS", k, last))
                        for k, last in streams.items()
                    ],
                    f"following {topic}",
                )
                for item in got:
                    if isinstance(item, Exception):
                        raise item
                    reply += read_reply_items(item) if item else []
                if not reply:
                    time.sleep(min(block_ms, 100) / 1000.0)
            else:
                reply = (
                    conn.client.execute_command(
                        b"XREAD",
                        "COUNT",
                        PAGE,
                        "BLOCK",
                        block_ms,
                        "STREAMS",
                        *streams,
                        *streams.values(),
                    )
                    or []
                )
        except rex.RedisError as err:
            raise translate(err, f"following {topic}") from err
        batch: list[Record] = []
        for key, entries in read_reply_items(reply):
            p = keys[key]
            recs = records_from_entries(topic, p, entries)
            if entries:
                last_ids[p] = text(entries[-1][0])
            batch += recs
        batch.sort(key=lambda r: parse_id(r.id))
        for record in batch:
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            yield record
