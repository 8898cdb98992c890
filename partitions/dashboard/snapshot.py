"""What the dashboard shows, read through partstream's public API in one call per refresh."""

from __future__ import annotations

import time
from typing import Any

from coordinator.errors import PartstreamError
from coordinator.group import GroupAdmin
from partitions.connection import Connection
from partitions.replay import replay
from partitions.topics import TopicAdmin


class Snapshots:
    """Builds dashboard snapshots; remembers the previous one to derive append rates."""

    def __init__(self, conn: Connection, topics: list[str]) -> None:
        self.conn = conn
        self.topics = topics
        self._admin = TopicAdmin(conn)
        self._groups = GroupAdmin(conn.client, conn.keys)
        self._last: dict[tuple[str, int], tuple[float, str | None, int]] = {}

    def topic_view(self, name: str) -> dict[str, Any]:
        desc = self._admin.describe(name).to_dict()
        now = time.monotonic()
        for p in desc["partitions"]:
            key = (name, p["partition"])
            added = p.get("entries_added", p["length"])
            prev = self._last.get(key)
            rate = 0.0
            if prev is not None and now > prev[0]:
                rate = max(0.0, (added - prev[2]) / (now - prev[0]))
            self._last[key] = (now, p["last_id"], added)
            p["rate"] = round(rate, 1)
        return desc

    def group_view(self, group: str) -> dict[str, Any]:
        from partitions.offsets import group_lag

        data = self._groups.describe(group).to_dict()
        try:
            lag = group_lag(self.conn, group)
        except PartstreamError as err:
            data["lag_error"] = str(err)
            return data
        by_tp = {(o.topic, o.partition): o for o in lag.partitions}
        for part in data.get("partitions", []):
            o = by_tp.get((part["topic"], part["partition"]))
            if o is not None:
                part.update(last_delivered_id=o.last_delivered_id, lag=o.lag, pending=o.pending)
        data["total_lag"] = lag.total_lag
        return data

    def dead_letters(self, topic: str, limit: int = 20) -> list[dict[str, Any]]:
        from partitions.deadletter import DeadLetters

        return [d.to_dict() for d in DeadLetters(self.conn).list(topic, limit=limit)]

    def latest(self, topic: str, partition: int, count: int = 10) -> list[dict[str, Any]]:
        key = self.conn.keys.stream(topic, partition)
        raw = self.conn.client.execute_command(b"XREVRANGE", key, "+", "-", "COUNT", count)
        from partitions.records import records_from_entries

        return [r.to_dict() for r in records_from_entries(topic, partition, raw)]

    def replay(self, topic: str, start: str, count: int) -> list[dict[str, Any]]:
        return [r.to_dict() for r in replay(self.conn, topic, start=start, count=count)]

    def snapshot(self, fleet_workers: list[dict[str, Any]]) -> dict[str, Any]:
        groups = self._groups.list()
        out: dict[str, Any] = {
            "time_ms": int(time.time() * 1000),
            "server": self.conn.server.describe(),
            "topics": [self.topic_view(t) for t in self.topics if self._admin.exists(t)],
            "groups": [],
            "workers": fleet_workers,
            "dead_letters": {t: self.dead_letters(t) for t in self.topics},
        }
        for g in groups:
            try:
                out["groups"].append(self.group_view(g))
            except PartstreamError as err:
                out["groups"].append({"group": g, "error": str(err)})
        return out
