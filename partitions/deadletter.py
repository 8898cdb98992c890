"""Dead letters: list a topic's dead-letter entries and replay them into the topic.

Each partition has its own dead-letter stream (``Keys.dlq``) in the partition's slot, so the
consumer moves an entry there and acks it in one atomic script. An entry keeps the original
key, value and headers plus ``dlq.*`` fields: origin topic, partition, id, group, delivery
count and reason (``max_deliveries``, ``trimmed`` or a user reason).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, replace
from typing import Any

from partitions.connection import Connection
from partitions.nodes import execute_per_key
from partitions.producer import Producer
from partitions.records import DeadLetter, dead_letter_from_entry
from partitions.topics import TopicAdmin


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
        parts = self._partitions(topic, partition)
        keys = [self.conn.keys.dlq(topic, p) for p in parts]
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
        dels = [(self.conn.keys.dlq(topic, d.partition or 0), d.dlq_id) for d, _ in futures]
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

    def _partitions(self, topic: str, partition: int | None) -> builtins.list[int]:
        n = TopicAdmin(self.conn).get(topic).partitions
        return list(range(n)) if partition is None else [partition]


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
