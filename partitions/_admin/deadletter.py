"""Dead letters: list a topic's dead-letter entries and replay them into the topic.

Each partition has its own dead-letter stream (``Keys.dlq``) in the partition's slot, so the
consumer moves an entry there and acks it in one atomic script. An entry keeps the original
key, value and headers plus ``dlq.*`` fields: origin topic, partition, id, group, delivery
count and reason (``max_deliveries``, ``trimmed``, ``deserialization`` or a user reason: a
short label), and the error that sent it there when one was given (``dlq.error``, at most
1 KiB of text).

:class:`DeadLetterTally` counts a dead-letter stream's entries by group and reason for the
metrics exporter, reading each entry once (see its docstring for exactly what it counts).
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from partitions._admin.topics import TopicAdmin
from partitions._base.keys import TopicLayout
from partitions._base.replies import DeadLetter, dead_letter_from_entry, entry_ids
from partitions._client.connection import Connection
from partitions._client.nodes import execute_per_key
from partitions._producer.producer import Producer


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: entries re-produced (and removed) and entries it could not replay."""

    replayed: int
    skipped: int  # nothing to re-produce: trimmed, another client's entry, or refused
    refused: tuple[str, ...] = ()  # why malformed or mismatched entries were not replayed

    def to_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "skipped": self.skipped, "refused": list(self.refused)}


class DeadLetters:
    """Reads and replays dead-letter streams. Thread-safe (stateless over a Connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def list(
        self,
        topic: str,
        *,
        partition: int | None = None,
        group: str | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters per partition of ``topic``, oldest first."""
        layout, parts = self._partitions(topic, partition)
        keys = [self.conn.keys.dlq(layout, p) for p in parts]
        replies = execute_per_key(
            self.conn,
            [(k, (b"XRANGE", k, "-", "+", "COUNT", limit)) for k in keys],
            f"reading dead letters of {topic}",
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        out = [
            _check_origin(dead_letter_from_entry(e), topic, p)
            for p, reply in zip(parts, replies, strict=True)
            for e in reply
        ]
        if group is not None:
            out = [d for d in out if d.group == group]
        return out

    def replay(
        self,
        topic: str,
        *,
        partition: int | None = None,
        group: str | None = None,
        limit: int = 10_000,
    ) -> ReplayResult:
        """Re-produce dead letters to their original partition, then delete them from the
        dead-letter stream (only once the append succeeded: a failure replays again, never
        loses). Trimmed ones have no payload and stay; so do entries another client wrote
        (``malformed``: the producer writes only key, value and headers, so re-producing would
        drop their fields) and dead letters whose metadata cannot be read."""
        letters = self.list(topic, partition=partition, group=group, limit=limit)
        layout = TopicAdmin(self.conn).get(topic).layout
        replayable = [
            d for d in letters if d.reason != "trimmed" and not d.record.foreign and not d.problems
        ]
        with Producer(self.conn) as producer:
            futures = [
                (
                    d,
                    producer.send(
                        topic,
                        d.record.value,
                        key=d.record.key,
                        headers=d.record.headers or None,
                        partition=d.partition or 0,
                    ),
                )
                for d in replayable
            ]
            producer.flush()
        for _, fut in futures:
            fut.result()
        dels = [(self.conn.keys.dlq(layout, d.partition or 0), d.dlq_id) for d, _ in futures]
        replies = execute_per_key(
            self.conn,
            [(k, ("XDEL", k, i)) for k, i in dels],
            f"removing replayed dead letters of {topic}",
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        refused = tuple(f"{d.dlq_id}: {'; '.join(d.problems)}" for d in letters if d.problems)
        return ReplayResult(len(futures), len(letters) - len(futures), refused)

    def _partitions(
        self, topic: str, partition: int | None
    ) -> tuple[TopicLayout, builtins.list[int]]:
        layout = TopicAdmin(self.conn).get(topic).layout
        return layout, list(range(layout.partitions)) if partition is None else [partition]


def _check_origin(d: DeadLetter, topic: str, partition: int) -> DeadLetter:
    """A dead letter must say it came from the partition whose dead-letter stream holds it:
    one that names another origin (written by hand, or by a client that may append there)
    is never replayed anywhere."""
    if d.problems or (d.topic == topic and d.partition == partition):
        return d
    problem = (
        f"its origin {d.topic}/{d.partition} does not match the dead-letter stream it sits in "
        f"({topic}/{partition}): not replayed"
    )
    return replace(d, problems=(*d.problems, problem))


# Labels of the entries a tally has not read yet, and of reasons past its per-stream cap.
UNCLASSIFIED = "unclassified"
OTHER = "other"


@dataclass(slots=True)
class _StreamTally:
    cursor: str | None = None  # the last entry classified (None: none yet)
    classified: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)


class DeadLetterTally:
    """Counts of the entries in dead-letter streams by (group, reason), kept current by
    reading only the entries it has not seen: at most ``read_limit`` per stream per
    :meth:`update`, so each round's work is bounded however long a stream is.

    What the counts mean, exactly: after an update, the counts of a stream add up to its
    length (XLEN) as read in that round. Entries not classified yet (just after start, or
    on a long stream still being read) are under group ``""`` and reason
    :data:`UNCLASSIFIED`; so the per-reason counts are exact once the tally has read to the
    stream's end. Entries leave a dead-letter stream only when deleted (``dlq replay``, an
    admin's XDEL): when the length falls below what was classified, the tally starts that
    stream again from its first entry (all unclassified until re-read). A deletion hidden by
    as many new entries in the same round is seen in the next one. At most ``max_labels``
    distinct (group, reason) pairs are kept per stream (user reasons are free text); the
    rest are counted under reason :data:`OTHER`.

    Not thread-safe: one collector owns it. Remembers only a cursor and the counts per
    stream, never the ids.
    """

    def __init__(self, read_limit: int = 1000, max_labels: int = 50) -> None:
        self.read_limit = read_limit
        self.max_labels = max_labels
        self._streams: dict[str, _StreamTally] = {}

    def read_from(self, key: str) -> str:
        """Where the next update of stream ``key`` reads from: ``-`` or ``(<last id read>``."""
        st = self._streams.get(key)
        return "-" if st is None or st.cursor is None else f"({st.cursor}"

    def commands(self, key: str) -> list[tuple[str, Sequence[object]]]:
        """The commands one update of stream ``key`` needs (send them in this order)."""
        start = self.read_from(key)
        return [
            (key, (b"XRANGE", key, start, "+", "COUNT", self.read_limit)),
            (key, (b"XLEN", key)),
        ]

    def update(self, key: str, entries: list[object], length: int) -> dict[tuple[str, str], int]:
        """Fold in the replies of :meth:`commands`; the stream's counts by (group, reason)."""
        st = self._streams.setdefault(key, _StreamTally())
        for entry in entries:
            d = dead_letter_from_entry(entry)
            label = (d.group, d.reason)
            if label not in st.counts and len(st.counts) >= self.max_labels:
                label = ("", OTHER)
            st.counts[label] += 1
        ids = entry_ids(entries)
        if ids:
            st.cursor = ids[-1]
        st.classified += len(ids)
        if length < st.classified:  # entries were deleted: count this stream afresh
            self._streams[key] = _StreamTally()
            return {("", UNCLASSIFIED): length} if length else {}
        out = {label: n for label, n in st.counts.items() if n}
        if length > st.classified:
            out[("", UNCLASSIFIED)] = length - st.classified
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop the state of streams not in ``keep`` (topics deleted)."""
        for key in set(self._streams) - keep:
            del self._streams[key]
