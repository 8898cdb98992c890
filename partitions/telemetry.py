"""Client telemetry building blocks: opt-in client metrics and W3C trace context in headers.

NOT WIRED IN YET. The producer and consumer do not call anything here today; this module
holds the standalone pieces they will use (issue 16, client half), tested on their own:

* :class:`ClientMetrics`: the documented client metric names (:data:`CLIENT_METRICS`) on a
  prometheus_client registry, or a no-op when disabled or when prometheus_client is not
  installed, so instrumented code never has to check.
* Trace context: :func:`inject` writes the W3C ``traceparent`` (and ``tracestate``) of the
  current OpenTelemetry span, or of an explicit :class:`TraceParent`, into a record's
  headers dict; :func:`extract` reads it back; :func:`otel_context` turns headers into an
  OpenTelemetry context to start a consumer span under. Without opentelemetry-api installed
  they do nothing (and :func:`otel_context` returns None). Header values are bytes or str,
  as ``Producer.send(headers=...)`` takes them and records carry them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# name -> (kind, label names, help). Kinds: counter, gauge, histogram (seconds or records).
CLIENT_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "partstream_producer_records_sent": (
        "counter", ("topic",), "Records whose append was acknowledged."),
    "partstream_producer_records_failed": (
        "counter", ("topic",), "Records whose send failed (the future raised)."),
    "partstream_producer_send_latency_seconds": (
        "histogram", ("topic",), "send() to acknowledged, per record (batching included)."),
    "partstream_producer_batch_records": (
        "histogram", ("topic",), "Records per appended batch."),
    "partstream_producer_buffered_records": (
        "gauge", (), "Records accepted by send() and not yet acknowledged."),
    "partstream_consumer_records_consumed": (
        "counter", ("group", "topic"), "Records handed out to the application."),
    "partstream_consumer_commits": ("counter", ("group",), "Commits (acks) sent."),
    "partstream_consumer_rebalances": (
        "counter", ("group",), "Assignment changes this member went through."),
    "partstream_consumer_dead_letters": (
        "counter", ("group", "topic", "reason"), "Records this member dead-lettered."),
    "partstream_consumer_assigned_partitions": (
        "gauge", ("group",), "Partitions this member owns."),
}  # fmt: skip


class ClientMetrics:
    """The client metrics of one process; a no-op unless enabled and prometheus_client is
    installed. Thread-safe (prometheus_client's metrics are).

    ``registry``: where to register (default: prometheus_client's global registry). Names
    and labels are checked against :data:`CLIENT_METRICS` even when disabled, so a typo
    fails in tests, not silently in production.
    """

    def __init__(self, registry: Any = None, *, enabled: bool = True) -> None:
        self._metrics: dict[str, Any] = {}
        if not enabled:
            return
        try:
            import prometheus_client as prom
        except ImportError:
            return
        kinds = {"counter": prom.Counter, "gauge": prom.Gauge, "histogram": prom.Histogram}
        extra = {} if registry is None else {"registry": registry}
        for name, (kind, labels, doc) in CLIENT_METRICS.items():
            self._metrics[name] = kinds[kind](name, doc, list(labels), **extra)

    @property
    def enabled(self) -> bool:
        return bool(self._metrics)

    def _child(self, name: str, kinds: tuple[str, ...], labels: dict[str, str]) -> Any:
        kind, names, _ = CLIENT_METRICS[name]  # KeyError: not a documented metric
        if kind not in kinds:
            raise TypeError(f"{name} is a {kind}")
        if set(labels) != set(names):
            raise ValueError(f"{name} takes labels {sorted(names)}, got {sorted(labels)}")
        metric = self._metrics.get(name)
        if metric is None:
            return None
        return metric.labels(**labels) if names else metric

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add to a counter (or a gauge)."""
        child = self._child(name, ("counter", "gauge"), labels)
        if child is not None:
            child.inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        child = self._child(name, ("gauge",), labels)
        if child is not None:
            child.set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation of a histogram."""
        child = self._child(name, ("histogram",), labels)
        if child is not None:
            child.observe(value)


_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C trace context ``traceparent`` (version 00)."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits (the parent span), not all zero
    flags: int = 1  # bit 0: sampled

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The traceparent in ``value``, or None if it is absent or invalid (per the W3C rules: a
    version other than ``ff``, ids not all zero; version 00 has exactly four fields, a later
    version may append more, which are ignored)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    m = _TRACEPARENT_RE.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def _header(headers: dict[str, Any], name: str) -> Any:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _otel_propagate() -> Any:
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate


def inject(
    headers: dict[str, Any] | None = None, traceparent: TraceParent | None = None
) -> dict[str, Any]:
    """``headers`` (a new dict if None) with the trace context added: ``traceparent`` if
    given, else the current OpenTelemetry span's (its propagator's ``traceparent`` and
    ``tracestate``). Without opentelemetry-api and without ``traceparent``, unchanged."""
    out = dict(headers or {})
    if traceparent is not None:
        out[TRACEPARENT] = traceparent.header()
        return out
    propagate = _otel_propagate()
    if propagate is not None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        out.update(carrier)
    return out


def extract(headers: dict[str, Any] | None) -> TraceParent | None:
    """The traceparent a record's headers carry (None if absent or invalid)."""
    return parse_traceparent(_header(headers or {}, TRACEPARENT))


def otel_context(headers: dict[str, Any] | None) -> Any:
    """An OpenTelemetry context from a record's headers, to start a consumer span in
    (``tracer.start_as_current_span(..., context=otel_context(record.headers))``); None
    without opentelemetry-api."""
    propagate = _otel_propagate()
    if propagate is None:
        return None
    carrier = {}
    for key, value in (headers or {}).items():
        if key.lower() in (TRACEPARENT, TRACESTATE):
            carrier[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return propagate.extract(carrier)
