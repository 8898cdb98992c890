"""The standalone client-telemetry pieces (not wired into the producer/consumer yet)."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from partitions.telemetry import (
    CLIENT_METRICS,
    ClientMetrics,
    TraceParent,
    extract,
    inject,
    otel_context,
    parse_traceparent,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_client_metrics_register_the_documented_names() -> None:
    registry = CollectorRegistry()
    m = ClientMetrics(registry)
    assert m.enabled
    m.inc("partstream_producer_records_sent", 3, topic="orders")
    m.observe("partstream_producer_send_latency_seconds", 0.004, topic="orders")
    m.set("partstream_producer_buffered_records", 7)
    m.inc("partstream_consumer_dead_letters", group="g", topic="orders", reason="trimmed")
    text = generate_latest(registry).decode()
    assert 'partstream_producer_records_sent_total{topic="orders"} 3.0' in text
    assert 'partstream_producer_send_latency_seconds_count{topic="orders"} 1.0' in text
    assert "partstream_producer_buffered_records 7.0" in text
    for name in CLIENT_METRICS:
        assert name in text


def test_names_kinds_and_labels_are_checked_even_when_disabled() -> None:
    off = ClientMetrics(enabled=False)
    assert not off.enabled
    off.inc("partstream_consumer_commits", group="g")  # a no-op
    with pytest.raises(KeyError):
        off.inc("partstream_consumer_typo", group="g")
    with pytest.raises(ValueError, match="labels"):
        off.inc("partstream_consumer_commits", topic="t")
    with pytest.raises(TypeError):
        off.set("partstream_consumer_commits", 1, group="g")


def test_without_prometheus_client_metrics_are_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    m = ClientMetrics()
    assert not m.enabled
    m.inc("partstream_producer_records_sent", topic="orders")


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
