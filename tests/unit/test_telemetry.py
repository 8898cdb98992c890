"""Client telemetry without a server: metric names, the per-batch and per-fetch recorders,
gauges read at scrape time, W3C trace context in headers."""

from __future__ import annotations

import re
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from partitions._base.records import Record
from partitions._telemetry.metrics import (
    CLIENT_METRICS,
    ClientMetrics,
    TraceParent,
    consumer_metrics,
    extract,
    inject,
    otel_context,
    parse_traceparent,
    producer_metrics,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_client_metrics_register_the_documented_names() -> None:
    registry = CollectorRegistry()
    m = ClientMetrics(registry)
    assert m.enabled
    m.inc("partstream_producer_records_sent", 3, topic="orders")
    m.observe("partstream_producer_send_latency_seconds", 0.004, topic="orders")
    m.set("partstream_producer_buffered_records", 7)
    m.inc("partstream_consumer_dead_letters", group="g", topic="orders")
    text = generate_latest(registry).decode()
    assert 'partstream_producer_records_sent_total{topic="orders"} 3.0' in text
    assert 'partstream_producer_send_latency_seconds_count{topic="orders"} 1.0' in text
    assert "partstream_producer_buffered_records 7.0" in text
    for name in CLIENT_METRICS:
        assert name in text


def test_names_kinds_and_labels_are_checked_even_when_disabled() -> None:
    off = ClientMetrics(enabled=False)
    assert not off.enabled
    off.inc("partstream_consumer_rebalances", group="g")  # a no-op
    with pytest.raises(KeyError):
        off.inc("partstream_consumer_typo", group="g")
    with pytest.raises(ValueError, match="labels"):
        off.inc("partstream_consumer_rebalances", topic="t")
    with pytest.raises(TypeError):
        off.set("partstream_consumer_rebalances", 1, group="g")
    assert producer_metrics(off) is None and producer_metrics(None) is None
    assert consumer_metrics(off, "g") is None


class _Batch:  # what ProducerMetrics reads of a batch
    def __init__(self, topic: str, count: int, nbytes: int, created: float) -> None:
        self.topic, self.count, self.nbytes, self.created = topic, count, nbytes, created


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_producer_metrics_are_recorded_per_batch() -> None:
    registry = CollectorRegistry()
    pm = producer_metrics(ClientMetrics(registry))
    assert pm is not None
    pm.sent(_Batch("orders", 100, 4096, created=10.0), append_s=0.002, now=10.05)  # type: ignore[arg-type]
    pm.sent(_Batch("orders", 20, 800, created=10.0), append_s=0.001, now=10.01)  # type: ignore[arg-type]
    pm.retried(_Batch("orders", 20, 800, created=10.0))  # type: ignore[arg-type]
    pm.failed(_Batch("audit", 3, 90, created=10.0))  # type: ignore[arg-type]
    t = {"topic": "orders"}
    assert _value(registry, "partstream_producer_records_sent_total", **t) == 120
    assert _value(registry, "partstream_producer_bytes_sent_total", **t) == 4896
    assert _value(registry, "partstream_producer_records_retried_total", **t) == 20
    assert _value(registry, "partstream_producer_records_failed_total", topic="audit") == 3
    assert _value(registry, "partstream_producer_batch_records_count", **t) == 2
    assert _value(registry, "partstream_producer_batch_records_sum", **t) == 120
    assert _value(registry, "partstream_producer_batch_records_bucket", le="100.0", **t) == 2
    assert _value(registry, "partstream_producer_batch_records_bucket", le="50.0", **t) == 1
    assert _value(registry, "partstream_producer_append_latency_seconds_sum", **t) == 0.003
    latency = _value(registry, "partstream_producer_send_latency_seconds_sum", **t)
    assert latency == pytest.approx(0.06)


def test_gauges_sum_their_sources_at_scrape_time_until_untracked() -> None:
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    a, b = producer_metrics(metrics), producer_metrics(metrics)
    assert a is not None and b is not None
    buffered = {"a": 5, "b": 7}
    a.track_buffer(lambda: buffered["a"])
    b.track_buffer(lambda: buffered["b"])
    assert _value(registry, "partstream_producer_buffered_records") == 12
    buffered["a"] = 0
    assert _value(registry, "partstream_producer_buffered_records") == 7
    b.close()
    assert _value(registry, "partstream_producer_buffered_records") == 0


def test_consumer_metrics_count_per_topic_and_rebalance() -> None:
    registry = CollectorRegistry()
    cm = consumer_metrics(ClientMetrics(registry), "billing")
    assert cm is not None
    cm.consumed([Record("orders", 0, f"1-{i}", None, b"v", {}) for i in range(3)])
    cm.consumed(
        [Record("orders", 0, "2-0", None, b"v", {}), Record("audit", 1, "2-1", None, b"v", {})]
    )
    cm.acked("orders", 4)
    cm.acked("orders", 0)
    cm.refused("audit", 2)
    cm.dead_lettered("orders", 1)
    cm.fetched(0.004)
    cm.rebalanced(assigned={"a": 1, "b": 2})
    cm.rebalanced(revoked=[])  # nothing changed: not a rebalance
    cm.rebalanced(revoked=["a"])
    owned = [2]
    cm.track_owned(lambda: owned[0])
    g = {"group": "billing"}
    assert _value(registry, "partstream_consumer_records_consumed_total", topic="orders", **g) == 4
    assert _value(registry, "partstream_consumer_records_consumed_total", topic="audit", **g) == 1
    assert _value(registry, "partstream_consumer_records_acked_total", topic="orders", **g) == 4
    assert _value(registry, "partstream_consumer_refused_acks_total", topic="audit", **g) == 2
    assert _value(registry, "partstream_consumer_dead_letters_total", topic="orders", **g) == 1
    assert _value(registry, "partstream_consumer_fetch_latency_seconds_count", **g) == 1
    assert _value(registry, "partstream_consumer_rebalances_total", **g) == 2
    assert _value(registry, "partstream_consumer_partitions_assigned_total", **g) == 2
    assert _value(registry, "partstream_consumer_partitions_revoked_total", **g) == 1
    assert _value(registry, "partstream_consumer_owned_partitions", **g) == 2
    cm.close()
    assert _value(registry, "partstream_consumer_owned_partitions", **g) == 0


def test_without_prometheus_client_metrics_are_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    m = ClientMetrics()
    assert not m.enabled
    m.inc("partstream_producer_records_sent", topic="orders")
    assert producer_metrics(m) is None


def test_traceparent_parsing_follows_the_w3c_rules() -> None:
    tp = parse_traceparent(TP)
    assert tp == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert tp.sampled and tp.header() == TP
    assert parse_traceparent(TP.encode()) == tp
    assert parse_traceparent("01" + TP[2:] + "-later-fields") is not None  # future version
    for bad in (
        None, "", "garbage", TP.upper(), "ff" + TP[2:], TP + "-x",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        b"\xff\xfe",
    ):  # fmt: skip
        assert parse_traceparent(bad) is None, bad


def test_inject_and_extract_an_explicit_context_through_record_headers() -> None:
    tp = TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 0)
    headers = inject({"source": b"web"}, tp)
    assert headers == {"source": b"web", "traceparent": tp.header()}
    # records carry header values as bytes
    assert extract({k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}) == tp
    assert extract({}) is None and extract(None) is None
    # a trace header already there, in any case, is replaced rather than doubled
    again = inject({"TraceParent": b"00-old", "tracestate": b"x=1", "k": b"v"}, tp)
    assert again == {"k": b"v", "traceparent": tp.header()}


def test_without_opentelemetry_inject_and_context_do_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert inject({"a": b"1"}) == {"a": b"1"}
    assert otel_context({"traceparent": TP.encode()}) is None


def test_with_opentelemetry_the_current_span_is_injected_and_extracted() -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    ctx = trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=trace.TraceFlags(1),
    )
    with trace.use_span(trace.NonRecordingSpan(ctx)):
        headers = inject({})
    assert headers["traceparent"] == TP
    back = trace.get_current_span(otel_context({"traceparent": TP.encode()})).get_span_context()
    assert (back.trace_id, back.span_id, back.is_remote) == (ctx.trace_id, ctx.span_id, True)


def test_readme_names_only_client_metrics_that_exist() -> None:
    from pathlib import Path

    from partitions._telemetry.metrics import CLIENT_METRICS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Client metrics", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"\bpartstream_(?:producer|consumer)_[a-z_]+\b", section))
    assert named and named <= set(CLIENT_METRICS), named - set(CLIENT_METRICS)
