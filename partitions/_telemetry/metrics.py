"""Client telemetry: opt-in client metrics and W3C trace context in record headers.

* :class:`ClientMetrics`: the documented client metric names (:data:`CLIENT_METRICS`) on a
  prometheus_client registry, or a no-op when disabled or when prometheus_client is not
  installed. ``Producer(..., metrics=m)`` and ``Consumer(..., metrics=m)`` record into it
  through :class:`ProducerMetrics` and :class:`ConsumerMetrics`, per batch and per fetch
  (never per record on the producer); without ``metrics`` nothing is recorded and the hot
  paths run exactly as before. Gauges are read at scrape time from the live clients.
* Trace context: :func:`inject` writes the W3C ``traceparent`` (and ``tracestate``) of the
  current OpenTelemetry span, of a given context, or of an explicit :class:`TraceParent`,
  into a record's headers dict; :func:`extract` reads it back; :func:`otel_context` turns
  headers into an OpenTelemetry context to start a consumer span under. Without
  opentelemetry-api installed they do nothing (and :func:`otel_context` returns None).
  Header values are bytes or str, as ``Producer.send(headers=...)`` takes them and records
  carry them. The spans themselves are :mod:`partitions._telemetry.tracing`'s.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from partitions._base.records import Record
    from partitions._producer.batch import Batch

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# name -> (kind, label names, help). Kinds: counter, gauge, histogram (seconds or records).
# Producer counters and histograms are recorded once per batch, when it completes; consumer
# ones once per hand-out, fetch or call (never per record on the producer side).
CLIENT_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "partstream_producer_records_sent": (
        "counter", ("topic",), "Records whose append was acknowledged."),
    "partstream_producer_bytes_sent": (
        "counter", ("topic",),
        "Bytes of the acknowledged records as written in their append call (key, value and "
        "header fields with their RESP framing; the call's own header excluded)."),
    "partstream_producer_records_failed": (
        "counter", ("topic",), "Records whose send failed (the future raised)."),
    "partstream_producer_records_retried": (
        "counter", ("topic",),
        "Records of batches queued again after a retriable error (per retry: a batch retried "
        "twice counts its records twice)."),
    "partstream_producer_batch_records": (
        "histogram", ("topic",), "Records per acknowledged batch."),
    "partstream_producer_append_latency_seconds": (
        "histogram", ("topic",),
        "One append round trip, per acknowledged batch: its pipeline written to its reply read "
        "(the successful attempt)."),
    "partstream_producer_send_latency_seconds": (
        "histogram", ("topic",),
        "A batch's first send() to its acknowledgement, per batch: the longest wait of its "
        "records (linger, queueing, retries and the append)."),
    "partstream_producer_buffered_records": (
        "gauge", (), "Records accepted by send() and not yet acknowledged or failed."),
    "partstream_consumer_records_consumed": (
        "counter", ("group", "topic"), "Records handed out to the application."),
    "partstream_consumer_records_acked": (
        "counter", ("group", "topic"),
        "Records the server acked for this member (ids acked before are not counted again)."),
    "partstream_consumer_refused_acks": (
        "counter", ("group", "topic"),
        "Acks the fence refused: the partition had moved to another member."),
    "partstream_consumer_dead_letters": (
        "counter", ("group", "topic"),
        "Records this member moved to a dead-letter stream (any reason: the exporter's "
        "partstream_deadletter_entries has them by reason)."),
    "partstream_consumer_fetch_latency_seconds": (
        "histogram", ("group",),
        "One fetch round trip over the owned partitions (acks riding along), per fetch; the "
        "blocking wait of an idle consumer is not included."),
    "partstream_consumer_rebalances": (
        "counter", ("group",),
        "Assignment changes this member applied: an assignment, a revocation (close "
        "included), a loss, or a partition found fenced by a newer owner."),
    "partstream_consumer_partitions_assigned": (
        "counter", ("group",), "Partitions this member was given."),
    "partstream_consumer_partitions_revoked": (
        "counter", ("group",),
        "Partitions this member gave up: revoked (close included), lost or found fenced."),
    "partstream_consumer_owned_partitions": (
        "gauge", ("group",), "Partitions the members of this process own now."),
}  # fmt: skip

# Histogram buckets: seconds (an append or fetch is sub-millisecond on a local server) and
# records per batch (batch_size is 1 to 100,000).
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)  # fmt: skip
RECORDS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000,
                   50_000, 100_000)  # fmt: skip


class ClientMetrics:
    """The client metrics of one process; a no-op unless enabled and prometheus_client is
    installed. Thread-safe (prometheus_client's metrics are). Share one instance among the
    producers and consumers that record into one registry (registering twice on a registry
    raises, as prometheus_client does for a duplicate name).

    ``registry``: where to register (default: prometheus_client's global registry). Names
    and labels are checked against :data:`CLIENT_METRICS` even when disabled, so a typo
    fails in tests, not silently in production.
    """

    def __init__(self, registry: Any = None, *, enabled: bool = True) -> None:
        self._metrics: dict[str, Any] = {}
        # Gauges read at scrape time: (name, label values) -> {source id: callable}.
        self._sources: dict[tuple[str, tuple[str, ...]], dict[int, Callable[[], float]]] = {}
        self._sources_lock = threading.Lock()
        if not enabled:
            return
        try:
            import prometheus_client as prom
        except ImportError:
            return
        kinds = {"counter": prom.Counter, "gauge": prom.Gauge, "histogram": prom.Histogram}
        extra = {} if registry is None else {"registry": registry}
        for name, (kind, labels, doc) in CLIENT_METRICS.items():
            more = dict(extra)
            if kind == "histogram":
                more["buckets"] = SECONDS_BUCKETS if name.endswith("_seconds") else RECORDS_BUCKETS
            self._metrics[name] = kinds[kind](name, doc, list(labels), **more)

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

    def track(self, name: str, source: Callable[[], float], **labels: str) -> int:
        """Make a gauge read ``source()`` at scrape time, summed with the other sources of the
        same gauge and labels (two producers of one process: their buffers add up). Returns a
        handle for :meth:`untrack`."""
        child = self._child(name, ("gauge",), labels)
        key = (name, tuple(labels[n] for n in CLIENT_METRICS[name][1]))
        handle = id(source)
        with self._sources_lock:
            sources = self._sources.get(key)
            if sources is None:
                sources = self._sources[key] = {}
                if child is not None:
                    child.set_function(lambda: float(sum(f() for f in list(sources.values()))))
            sources[handle] = source
        return handle

    def untrack(self, name: str, handle: int, **labels: str) -> None:
        """Stop reading a source :meth:`track` added."""
        key = (name, tuple(labels[n] for n in CLIENT_METRICS[name][1]))
        with self._sources_lock:
            self._sources.get(key, {}).pop(handle, None)


class ProducerMetrics:
    """What one producer records into :class:`ClientMetrics`, per batch. Thread-safe."""

    def __init__(self, metrics: ClientMetrics) -> None:
        self._m = metrics
        self._topics: dict[str, tuple[Any, ...]] = {}
        self._buffer: tuple[int, Callable[[], float]] | None = None

    def _of(self, topic: str) -> tuple[Any, ...]:
        children = self._topics.get(topic)
        if children is None:
            m = self._m._metrics
            children = self._topics[topic] = tuple(
                m[f"partstream_producer_{n}"].labels(topic=topic)
                for n in ("records_sent", "bytes_sent", "records_failed", "records_retried",
                          "batch_records", "append_latency_seconds", "send_latency_seconds")
            )  # fmt: skip
        return children

    def track_buffer(self, source: Callable[[], float]) -> None:
        self._buffer = (self._m.track("partstream_producer_buffered_records", source), source)

    def close(self) -> None:
        if self._buffer is not None:
            self._m.untrack("partstream_producer_buffered_records", self._buffer[0])
            self._buffer = None

    def sent(self, batch: Batch, append_s: float, now: float) -> None:
        """A batch was acknowledged; its append round trip took ``append_s``."""
        sent, nbytes, _, _, size, append, latency = self._of(batch.topic)
        sent.inc(batch.count)
        nbytes.inc(batch.nbytes)
        size.observe(batch.count)
        append.observe(append_s)
        latency.observe(now - batch.created)

    def failed(self, batch: Batch) -> None:
        self._of(batch.topic)[2].inc(batch.count)

    def retried(self, batch: Batch) -> None:
        self._of(batch.topic)[3].inc(batch.count)


class ConsumerMetrics:
    """What one consumer (and its fetcher) records into :class:`ClientMetrics`. One thread."""

    def __init__(self, metrics: ClientMetrics, group: str) -> None:
        self._m = metrics
        self.group = group
        m = metrics._metrics
        self._fetch = m["partstream_consumer_fetch_latency_seconds"].labels(group=group)
        self._rebalances = m["partstream_consumer_rebalances"].labels(group=group)
        self._assigned = m["partstream_consumer_partitions_assigned"].labels(group=group)
        self._revoked = m["partstream_consumer_partitions_revoked"].labels(group=group)
        self._topics: dict[str, tuple[Any, ...]] = {}
        self._owned: tuple[int, Callable[[], float]] | None = None

    def _of(self, topic: str) -> tuple[Any, ...]:
        children = self._topics.get(topic)
        if children is None:
            m, g = self._m._metrics, self.group
            children = self._topics[topic] = tuple(
                m[f"partstream_consumer_{n}"].labels(group=g, topic=topic)
                for n in ("records_consumed", "records_acked", "refused_acks", "dead_letters")
            )
        return children

    def track_owned(self, source: Callable[[], float]) -> None:
        name = "partstream_consumer_owned_partitions"
        self._owned = (self._m.track(name, source, group=self.group), source)

    def close(self) -> None:
        if self._owned is not None:
            name = "partstream_consumer_owned_partitions"
            self._m.untrack(name, self._owned[0], group=self.group)
            self._owned = None

    def consumed(self, records: list[Record]) -> None:
        """Records handed out together (one poll, one iteration step)."""
        topic = records[0].topic
        if len(records) == 1 or all(r.topic == topic for r in records):
            self._of(topic)[0].inc(len(records))
            return
        counts: dict[str, int] = {}
        for r in records:
            counts[r.topic] = counts.get(r.topic, 0) + 1
        for t, n in counts.items():
            self._of(t)[0].inc(n)

    def acked(self, topic: str, n: int) -> None:
        if n:
            self._of(topic)[1].inc(n)

    def refused(self, topic: str, n: int) -> None:
        if n:
            self._of(topic)[2].inc(n)

    def dead_lettered(self, topic: str, n: int) -> None:
        if n:
            self._of(topic)[3].inc(n)

    def fetched(self, seconds: float) -> None:
        self._fetch.observe(seconds)

    def rebalanced(self, assigned: Iterable[Any] = (), revoked: Iterable[Any] = ()) -> None:
        """One applied assignment change: the partitions it gave and took."""
        a, r = len(list(assigned)), len(list(revoked))
        if not (a or r):
            return
        self._rebalances.inc()
        if a:
            self._assigned.inc(a)
        if r:
            self._revoked.inc(r)


def producer_metrics(metrics: ClientMetrics | None) -> ProducerMetrics | None:
    """The producer's recorder, or None (nothing to record: the producer skips every hook)."""
    return ProducerMetrics(metrics) if metrics is not None and metrics.enabled else None


def consumer_metrics(metrics: ClientMetrics | None, group: str) -> ConsumerMetrics | None:
    """The consumer's recorder, or None (nothing to record)."""
    return ConsumerMetrics(metrics, group) if metrics is not None and metrics.enabled else None


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
    headers: Any = None, traceparent: TraceParent | None = None, *, context: Any = None
) -> dict[str, Any]:
    """``headers`` (a new dict if None) with the trace context added: ``traceparent`` if
    given, else that of the OpenTelemetry ``context`` (default: the current one), as its
    propagator writes it (``traceparent`` and ``tracestate``). A trace header already there,
    in any case, is replaced. Without opentelemetry-api and without ``traceparent``,
    unchanged."""
    out = dict(headers or {})
    carrier: dict[str, str] = {}
    if traceparent is not None:
        carrier[TRACEPARENT] = traceparent.header()
    else:
        propagate = _otel_propagate()
        if propagate is None:
            return out
        propagate.inject(carrier, context=context)
    if carrier:
        for key in [k for k in out if k.lower() in (TRACEPARENT, TRACESTATE)]:
            del out[key]
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
