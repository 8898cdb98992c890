"""Printing results: Kafka perf-tool style text, one JSON document, or CSV rows."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from partitions.bench.stats import RunResult, Target, Window


@dataclass(slots=True)
class BenchResult:
    """Everything one ``partstream bench MODE`` invocation measured, with its context."""

    mode: str
    command: str
    config: dict[str, Any]
    env: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "command": self.command,
            "config": self.config,
            "env": self.env,
            "runs": [r.to_dict() for r in self.runs],
            "ratios": {k: round(v, 3) for k, v in self.ratios.items()},
            "targets": [t.to_dict() for t in self.targets],
            "targets_met": all(t.met for t in self.targets),
            "notes": self.notes,
            **({"extra": self.extra} if self.extra else {}),
        }


def window_line(name: str, w: Window) -> str:
    """``name: N records, R records/sec (M MB/sec), A ms avg latency, X ms max latency.``"""
    lat = (
        f", {w.lat_avg:.1f} ms avg latency, {w.lat_max:.1f} ms max latency" if w.lat_max > 0 else ""
    )
    return f"{name}: {w.records} records, {w.rate:,.1f} records/sec ({w.mb_per_s:.2f} MB/sec){lat}."


def final_line(run: RunResult) -> str:
    """The closing line of a run, with the latency percentiles."""
    lat = run.latency
    text = (
        f"{run.name}: {run.records} records in {run.seconds:.2f} s, "
        f"{run.rate:,.1f} records/sec ({run.mb_per_s:.2f} MB/sec)"
    )
    if lat.max > 0:
        text += (
            f", {lat.avg:.2f} ms avg latency, {lat.max:.2f} ms max latency, "
            f"{lat.p50:.2f} ms 50th, {lat.p95:.2f} ms 95th, {lat.p99:.2f} ms 99th, "
            f"{lat.p999:.2f} ms 99.9th"
        )
    cost = [
        f"{v:.2f} us/record {who} CPU"
        for who, v in (("server", run.server_us), ("client", run.client_us))
        if v
    ]
    if cost:
        text += ", " + ", ".join(cost)
    text += "."
    if run.note:
        text += f" [{run.note}]"
    return text


def summary_text(result: BenchResult) -> str:
    lines = [f"== partstream bench {result.mode}: summary"]
    lines += [final_line(r) for r in result.runs]
    lines += [f"ratio {name}: {value:.2f}x" for name, value in result.ratios.items()]
    lines += [f"target {t.describe()}" for t in result.targets]
    lines += [f"note: {n}" for n in result.notes]
    srv = result.env.get("server", {})
    lines.append(
        f"env: {srv.get('describe', '?')}, {result.env.get('cpu_count')} CPUs, "
        f"load {result.env.get('load_avg_1m')}, Python {result.env.get('python')}"
    )
    return "\n".join(lines)


CSV_FIELDS = (
    "mode",
    "kind",
    "name",
    "records",
    "seconds",
    "records_per_s",
    "mb_per_s",
    "lat_avg_ms",
    "lat_max_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "server_us_per_record",
    "value",
    "goal",
    "met",
)


def csv_text(result: BenchResult) -> str:
    """One row per run, per ratio and per target."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in result.runs:
        lat = r.latency
        writer.writerow(
            {
                "mode": result.mode,
                "kind": "run",
                "name": r.name,
                "records": r.records,
                "seconds": f"{r.seconds:.4f}",
                "records_per_s": f"{r.rate:.1f}",
                "mb_per_s": f"{r.mb_per_s:.3f}",
                "lat_avg_ms": f"{lat.avg:.3f}",
                "lat_max_ms": f"{lat.max:.3f}",
                "p50_ms": f"{lat.p50:.3f}",
                "p95_ms": f"{lat.p95:.3f}",
                "p99_ms": f"{lat.p99:.3f}",
                "p999_ms": f"{lat.p999:.3f}",
                "server_us_per_record": "" if r.server_us is None else f"{r.server_us:.4f}",
            }
        )
    for name, value in result.ratios.items():
        writer.writerow(
            {"mode": result.mode, "kind": "ratio", "name": name, "value": f"{value:.3f}"}
        )
    for t in result.targets:
        writer.writerow(
            {
                "mode": result.mode,
                "kind": "target",
                "name": t.name,
                "value": f"{t.value:.3f}",
                "goal": t.goal,
                "met": t.met,
            }
        )
    return buf.getvalue()


def phase_header(name: str, detail: str) -> str:
    return f"-- {name}: {detail}"
