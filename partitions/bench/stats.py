"""Latency summaries and per-run results of the load harness: plain data, no I/O.

Latencies are kept as raw samples (milliseconds) and summarised with nearest-rank
percentiles, the way Kafka's perf tools print them. A run's throughput is its record count
over the span from the first worker's start to the last worker's end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True, slots=True)
class Latency:
    """avg / max / percentiles of a latency sample, in milliseconds."""

    samples: int
    avg: float
    max: float
    p50: float
    p95: float
    p99: float
    p999: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Latency:
        ordered = sorted(samples)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        pcts = {name: percentile(ordered, pct) for name, pct in PERCENTILES}
        return cls(
            samples=len(ordered),
            avg=math.fsum(ordered) / len(ordered),
            max=float(ordered[-1]),
            **pcts,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "avg": round(self.avg, 3),
            "max": round(self.max, 3),
            "p50": round(self.p50, 3),
            "p95": round(self.p95, 3),
            "p99": round(self.p99, 3),
            "p999": round(self.p999, 3),
        }


@dataclass(frozen=True, slots=True)
class Window:
    """One reporting window of a run (Kafka perf-test style)."""

    t: float  # seconds since the run started, at the window's end
    records: int
    rate: float  # records/s
    mb_per_s: float
    lat_avg: float  # ms; 0 when no latency was sampled in the window
    lat_max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3),
            "records": self.records,
            "records_per_s": round(self.rate, 1),
            "mb_per_s": round(self.mb_per_s, 3),
            "lat_avg_ms": round(self.lat_avg, 3),
            "lat_max_ms": round(self.lat_max, 3),
        }


@dataclass(slots=True)
class RunResult:
    """One measured run: who ran (``name``), how much, how fast, with what latency."""

    name: str
    records: int
    seconds: float
    record_bytes: int
    latency: Latency
    windows: list[Window] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # CPU seconds the run cost the server (INFO cpu, after minus before) and the side's own
    # processes (their user + system time while measured); None where not measured.
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_us(self) -> float | None:
        """Server CPU microseconds per record (steadier than wall time on a busy machine)."""
        return _per_record_us(self.server_cpu_s, self.records)

    @property
    def client_us(self) -> float | None:
        """The side's own CPU microseconds per record."""
        return _per_record_us(self.client_cpu_s, self.records)

    @property
    def mb_per_s(self) -> float:
        return self.rate * self.record_bytes / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "records": self.records,
            "seconds": round(self.seconds, 4),
            "records_per_s": round(self.rate, 1),
            "mb_per_s": round(self.mb_per_s, 3),
            "latency_ms": self.latency.to_dict(),
            "windows": [w.to_dict() for w in self.windows],
            "note": self.note,
            **({"server_us_per_record": round(v, 3)} if (v := self.server_us) else {}),
            **({"client_us_per_record": round(v, 3)} if (v := self.client_us) else {}),
            **({"extra": self.extra} if self.extra else {}),
        }


def _per_record_us(cpu_s: float | None, records: int) -> float | None:
    return cpu_s * 1e6 / records if cpu_s is not None and records > 0 else None


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue, checked against a ratio measured in the same run."""

    name: str  # e.g. "produce partstream/redis-py"
    value: float
    goal: float
    higher_is_better: bool = True
    # Why the ratio cannot count, whatever its value (e.g. the load was not kept): missed.
    void: str = ""

    @property
    def met(self) -> bool:
        if self.void:
            return False
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        verdict = "met" if self.met else "MISSED"
        if self.void:
            verdict += f", {self.void}"
        return f"{self.name} = {self.value:.2f}x (target {op} {self.goal:g}x: {verdict})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "goal": self.goal,
            "higher_is_better": self.higher_is_better,
            "met": self.met,
            **({"void": self.void} if self.void else {}),
        }


def ratio(a: float, b: float) -> float:
    """a / b, or 0.0 when b is zero (a failed or empty baseline)."""
    return a / b if b > 0 else 0.0


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
