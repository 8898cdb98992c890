"""What the dashboard shows, read through partstream's public API in one call per refresh.

Besides the current state, each snapshot adds a point to a bounded history that the page
charts over time (:class:`History`): produce rate per topic (entries appended per second,
from XINFO STREAM's entries-added), consume rate per group (entries the group finished with
per second: the topic's entries-added minus the group's lag), lag and lag seconds per group,
and the append latency of the dashboard's own produce actions (send() to acknowledged, p50
and p99 per action, as its producer sees it: batching and the round trip included). The
server keeps no append latency of its own that can be told apart (its command statistics
count the append function together with every other function), so none is shown.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

from partitions._admin.groups import GroupAdmin
from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin
from partitions._base.errors import PartstreamError
from partitions._client.connection import Connection

HISTORY_POINTS = 900  # 15 minutes at the default refresh of 1 s


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (``values`` not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


class History:
    """The last :data:`HISTORY_POINTS` chart points, and the rates between snapshots.

    A point: ``{"t": unix seconds, "produce": {topic: entries/s}, "consume": {group:
    entries/s}, "lag": {group: entries}, "lag_seconds": {group: s}, "append_ms": {"p50",
    "p99"} or None}``. Thread-safe.
    """

    def __init__(self, limit: int = HISTORY_POINTS, min_gap_s: float = 0.5) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=limit)
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()
        self._prev: tuple[float, dict[str, int], dict[str, int]] | None = None
        self._append: list[dict[str, float]] = []

    def note_append(self, latencies_ms: list[float]) -> None:
        """Record one produce action's per-record latencies (shown at the next point)."""
        if latencies_ms:
            stats = {"p50": percentile(latencies_ms, 0.5), "p99": percentile(latencies_ms, 0.99)}
            with self._lock:
                self._append.append(stats)

    def add(
        self,
        now: float,
        produced: dict[str, int],
        consumed: dict[str, int],
        lag: dict[str, int],
        lag_seconds: dict[str, float],
    ) -> dict[str, Any] | None:
        """Add a point from counters (entries appended per topic, entries finished per
        group) and gauges; None if too soon after the previous one (several pages open)."""
        with self._lock:
            prev = self._prev
            if prev is not None and now - prev[0] < self.min_gap_s:
                return None
            self._prev = (now, produced, consumed)
            dt = now - prev[0] if prev else 0.0

            def rates(cur: dict[str, int], old: dict[str, int]) -> dict[str, float]:
                return {
                    k: round(max(0.0, (v - old[k]) / dt), 1) for k, v in cur.items() if k in old
                }

            append = self._append[-1] if self._append else None
            self._append = []
            point = {
                "t": round(time.time(), 3),
                "produce": rates(produced, prev[1]) if prev else {},
                "consume": rates(consumed, prev[2]) if prev else {},
                "lag": lag,
                "lag_seconds": lag_seconds,
                "append_ms": append,
            }
            self.points.append(point)
            return point

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.points)

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.points[-1] if self.points else None


class Snapshots:
    """Builds dashboard snapshots; remembers the previous one to derive append rates."""

    def __init__(self, conn: Connection, topics: list[str]) -> None:
        self.conn = conn
        self.topics = topics
        self._admin = TopicAdmin(conn)
        self._groups = GroupAdmin(conn)
        self._last: dict[tuple[str, int], tuple[float, str | None, int]] = {}
        self.history = History()

    def topic_view(self, name: str) -> dict[str, Any]:
        desc = self._admin.describe(name).to_dict()
        now = time.monotonic()
        for p in desc["partitions"]:
            key = (name, p["partition"])
            added = p.get("entries_added") or p["length"]
            prev = self._last.get(key)
            rate = 0.0
            if prev is not None and now > prev[0]:
                rate = max(0.0, (added - prev[2]) / (now - prev[0]))
            self._last[key] = (now, p["last_id"], added)
            p["rate"] = round(rate, 1)
        return desc

    def group_view(self, group: str) -> dict[str, Any]:
        from partitions._admin.groups import group_lag

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
                part["lag_seconds"] = o.lag_seconds
        data["total_lag"] = lag.total_lag
        data["max_lag_seconds"] = lag.max_lag_seconds
        data["topic_lag"] = {}
        for o in lag.partitions:
            data["topic_lag"][o.topic] = data["topic_lag"].get(o.topic, 0) + o.lag
        return data

    def dead_letters(self, topic: str, limit: int = 20) -> list[dict[str, Any]]:
        from partitions._admin.deadletter import DeadLetters

        return [d.to_dict() for d in DeadLetters(self.conn).list(topic, limit=limit)]

    def latest(self, topic: str, partition: int, count: int = 10) -> list[dict[str, Any]]:
        key = self.conn.keys.stream(self._admin.get(topic).layout, partition)
        raw = self.conn.client.execute_command(b"XREVRANGE", key, "+", "-", "COUNT", count)
        from partitions._base.replies import records_from_entries

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
        out["point"] = self._chart_point(out["topics"], out["groups"])
        return out

    def _chart_point(
        self, topics: list[dict[str, Any]], groups: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        produced = {
            t["name"]: sum(p.get("entries_added") or p["length"] for p in t["partitions"])
            for t in topics
        }
        consumed, lag, lag_s = {}, {}, {}
        for g in groups:
            if "total_lag" not in g:
                continue
            lag[g["group"]] = g["total_lag"]
            lag_s[g["group"]] = g["max_lag_seconds"]
            # entries the group is done with (acked or dead-lettered) on the topics shown
            finished = [produced[t] - n for t, n in g["topic_lag"].items() if t in produced]
            if finished:
                consumed[g["group"]] = sum(finished)
        added = self.history.add(time.monotonic(), produced, consumed, lag, lag_s)
        return added or self.history.last()  # pages skip a point they already have
