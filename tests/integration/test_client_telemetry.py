"""Client metrics and tracing against a real server: counts match what the test sent and
consumed; consumer spans continue the producer spans through the record headers."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.fence import claim_fence
from partitions._base.records import Record
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions._telemetry.metrics import ClientMetrics
from tests import helpers
from tests.helpers import FAST, layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


drain = functools.partial(helpers.drain, timeout=15.0)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def where(span: ReadableSpan) -> tuple[str, str]:
    """(partition, entry id) of a send or process span."""
    a = span.attributes or {}
    return str(a["messaging.destination.partition.id"]), str(a["messaging.message.id"])


def by_name(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


# -- metrics ------------------------------------------------------------------------------
def test_metric_counts_match_the_records_sent_and_consumed(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 4))
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    t = {"topic": "orders"}
    with Producer(conn, ProducerConfig(batch_size=50), metrics=metrics) as p:
        futures = [p.send("orders", b"v%d" % i, key=b"k%d" % (i % 37)) for i in range(500)]
        assert p.flush(30)
        assert value(registry, "partstream_producer_buffered_records") == 0
    assert all(f.exception(0) is None for f in futures)
    assert value(registry, "partstream_producer_records_sent_total", **t) == 500
    assert value(registry, "partstream_producer_records_failed_total", **t) == 0
    assert value(registry, "partstream_producer_batch_records_sum", **t) == 500
    batches = value(registry, "partstream_producer_batch_records_count", **t)
    assert 10 <= batches <= 500  # batch_size 50: at least ten batches, one per call
    assert value(registry, "partstream_producer_append_latency_seconds_count", **t) == batches
    assert value(registry, "partstream_producer_send_latency_seconds_count", **t) == batches
    # Every record is "$1 0 $len key $len value" in RESP: at least its key and value bytes.
    payload = sum(len(b"v%d" % i) + len(b"k%d" % (i % 37)) for i in range(500))
    assert value(registry, "partstream_producer_bytes_sent_total", **t) > payload

    g = {"group": "billing"}
    c = Consumer("billing", "orders", conn=conn, metrics=metrics, group_settings=FAST)
    try:
        got = drain(c, 500)
        assert len(got) == 500
        assert value(registry, "partstream_consumer_owned_partitions", **g) == 4
    finally:
        c.close()  # acks the last poll's records
    assert value(registry, "partstream_consumer_records_consumed_total", **g, **t) == 500
    assert value(registry, "partstream_consumer_records_acked_total", **g, **t) == 500
    assert value(registry, "partstream_consumer_refused_acks_total", **g, **t) == 0
    assert value(registry, "partstream_consumer_fetch_latency_seconds_count", **g) >= 1
    assert value(registry, "partstream_consumer_partitions_assigned_total", **g) == 4
    assert value(registry, "partstream_consumer_partitions_revoked_total", **g) == 4  # close
    assert value(registry, "partstream_consumer_rebalances_total", **g) >= 2
    assert value(registry, "partstream_consumer_owned_partitions", **g) == 0

    # Iteration counts the same, one record per hand-out; commit() acks the last one.
    it = {"group": "audit"}
    c = Consumer("audit", "orders", conn=conn, metrics=metrics, group_settings=FAST)
    try:
        for n, _ in enumerate(c, 1):
            if n == 500:
                break
        c.commit()
    finally:
        c.close()
    assert value(registry, "partstream_consumer_records_consumed_total", **it, **t) == 500
    assert value(registry, "partstream_consumer_records_acked_total", **it, **t) == 500


def test_refused_acks_and_dead_letters_are_counted(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    with Producer(conn) as p:
        for i in range(10):
            p.send("orders", b"v%d" % i, key=b"k")
    registry = CollectorRegistry()
    g = {"group": "g", "topic": "orders"}
    c = Consumer(
        "g", "orders", conn=conn, config=ConsumerConfig(fetch_count=5),
        metrics=ClientMetrics(registry), group_settings=FAST,
    )  # fmt: skip
    try:
        first = drain(c, 5)
        assert len(first) == 5
        c.dead_letter(first[0], "poison")
        assert value(registry, "partstream_consumer_dead_letters_total", **g) == 1
        # A newer grant takes the fence: the acks riding on the next poll are refused.
        assert claim_fence(
            conn.client, conn.keys, "g", layout(conn, "orders"), 0, "intruder", 2**52
        )
        assert c.poll(timeout=0.3) == []
        assert c.refused_acks == 4
        assert value(registry, "partstream_consumer_refused_acks_total", **g) == 4
        assert value(registry, "partstream_consumer_records_acked_total", **g) == 0
        assert value(registry, "partstream_consumer_partitions_revoked_total", group="g") == 1
    finally:
        c.close()


def test_failed_and_retried_records_are_counted(conn: Connection, server_url: str) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    # Partition 0's stream replaced by a string: WRONGTYPE, refused for good.
    stream = conn.keys.stream(layout(conn, "orders"), 0)
    conn.client.delete(stream)
    conn.client.set(stream, "not a stream")
    with Producer(conn, metrics=metrics) as p:
        failed = [p.send("orders", b"v", partition=0) for _ in range(3)]
        p.flush(30)
    assert all(f.exception(0) is not None for f in failed)
    assert value(registry, "partstream_producer_records_failed_total", topic="orders") == 3
    assert value(registry, "partstream_producer_records_sent_total", topic="orders") == 0

    # Retried: a network that holds requests until the producer's socket timeout.
    url = urlparse(server_url)
    if url.scheme not in ("redis", "rediss") or url.port is None:
        pytest.skip("the fault proxy needs a TCP server")
    from tests.faults.proxy import FaultProxy

    proxy = FaultProxy(url.port)
    try:
        netloc = f"{url.username or ''}{':' + url.password if url.password else ''}"
        netloc = (netloc + "@" if netloc else "") + f"127.0.0.1:{proxy.port}"
        cfg = ClientConfig(
            url=url._replace(netloc=netloc).geturl(), namespace=conn.config.namespace,
            socket_timeout=0.5,
        )  # fmt: skip
        pconn = connect(cfg)
        try:
            with Producer(pconn, ProducerConfig(delivery_timeout_ms=20_000), metrics=metrics) as p:
                p.send("orders", b"warm-up", partition=1).result(10)  # topic metadata read
                proxy.blackhole("up")
                sent = [p.send("orders", b"v%d" % i, partition=1) for i in range(5)]
                time.sleep(1.2)  # an attempt or two time out
                proxy.heal()
                assert p.flush(20)
        finally:
            pconn.close()
    finally:
        proxy.close()
    assert all(f.exception(0) is None for f in sent)
    assert value(registry, "partstream_producer_records_sent_total", topic="orders") == 6
    assert value(registry, "partstream_producer_records_retried_total", topic="orders") >= 5
    assert (
        conn.client.xlen(conn.keys.stream(layout(conn, "orders"), 1)) == 6
    )  # retries were not appended


# -- tracing ------------------------------------------------------------------------------
def test_consumer_spans_continue_the_producer_spans_through_headers(
    conn: Connection, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request, Producer(conn, tracing=provider) as p:
        futures = [
            p.send("orders", {"n": i}, key=f"k{i}", headers={"source": "web"} if i % 2 else None)
            for i in range(6)
        ]
        # Two partitions can append the same entry id (same millisecond): (partition, id).
        ids = {(str(m.partition), m.id) for m in (f.result(10) for f in futures)}
    assert len(ids) == 6
    sends = {where(s): s for s in by_name(exporter, "send orders")}
    assert set(sends) == ids
    for s in sends.values():
        assert s.kind is trace.SpanKind.PRODUCER
        assert s.parent is not None and s.parent.span_id == request.get_span_context().span_id
        assert s.attributes["messaging.system"] == "partstream"
        assert s.attributes["messaging.destination.name"] == "orders"
        assert s.attributes["messaging.operation.type"] == "send"

    handled: dict[tuple[str, str], Record] = {}
    c = Consumer("g", "orders", conn=conn, tracing=provider, group_settings=FAST)
    try:
        records = iter(c)
        for rec in records:
            with tracer.start_as_current_span("handler"):
                handled[(str(rec.partition), rec.id)] = rec
            if len(handled) == 6:
                break
        records.close()  # type: ignore[attr-defined]  # ends the last process span now
    finally:
        c.close()
    assert set(handled) == ids
    assert all(r.headers.get("traceparent") for r in handled.values())
    assert all(r.headers["source"] == b"web" for r in handled.values() if "source" in r.headers)
    processes = by_name(exporter, "process orders")
    assert len(processes) == 6
    handlers = {s.parent.span_id: s for s in by_name(exporter, "handler") if s.parent}
    for s in processes:
        send = sends[where(s)].get_span_context()
        assert s.kind is trace.SpanKind.CONSUMER
        assert s.parent is not None and s.parent.span_id == send.span_id
        assert s.context.trace_id == send.trace_id == request.get_span_context().trace_id
        assert s.attributes["messaging.consumer.group.name"] == "g"
        assert s.attributes["messaging.operation.type"] == "process"
        assert s.attributes["messaging.destination.name"] == "orders"
        assert s.context.span_id in handlers  # the loop body ran inside the process span


def test_poll_spans_link_each_record_to_its_producer_span(
    conn: Connection, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    with Producer(conn, tracing=provider) as p:
        for i in range(5):
            p.send("orders", b"v%d" % i, key=b"k")
    sends = {s.context.span_id for s in by_name(exporter, "send orders")}
    assert len(sends) == 5
    c = Consumer("g", "orders", conn=conn, tracing=provider, group_settings=FAST)
    try:
        assert len(drain(c, 5)) == 5
    finally:
        c.close()
    polls = by_name(exporter, "poll")
    assert polls and all(s.name == "poll orders" for s in polls)  # no span for empty polls
    assert sum(s.attributes["messaging.batch.message_count"] for s in polls) == 5
    assert {link.context.span_id for s in polls for link in s.links} == sends
    for s in polls:
        assert s.kind is trace.SpanKind.CLIENT
        assert s.attributes["messaging.operation.type"] == "receive"
        assert s.attributes["messaging.consumer.group.name"] == "g"
        assert s.attributes["messaging.destination.partition.id"] == "0"
        assert s.end_time is not None and s.start_time is not None
        assert s.start_time <= s.end_time


def test_without_tracing_headers_are_untouched_and_send_is_the_plain_one(
    conn: Connection, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer"), Producer(conn) as p:
        assert type(p).send is Producer.send and "send" not in vars(p)
        p.send("orders", b"a", key=b"k", headers={"source": "web"})
        p.send("orders", b"b", key=b"k")
    c = Consumer("g", "orders", conn=conn, tracing=provider, group_settings=FAST)
    try:
        with tracer.start_as_current_span("loop") as loop:
            got: list[Record] = []
            records = iter(c)
            for rec in records:
                got.append(rec)
                if len(got) == 2:
                    break
            records.close()  # type: ignore[attr-defined]
    finally:
        c.close()
    assert [r.headers for r in got] == [{"source": b"web"}, {}]
    assert len(by_name(exporter, "send")) == 0
    # No context in the headers: a process span is a child of the code around the loop.
    processes = by_name(exporter, "process orders")
    assert len(processes) == 2
    assert all(s.parent and s.parent.span_id == loop.get_span_context().span_id for s in processes)


def test_tracing_without_opentelemetry_is_a_no_op(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 1))
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with Producer(conn, tracing=True) as p:
        assert "send" not in vars(p)
        p.send("orders", b"a", key=b"k").result(10)
    c = Consumer("g", "orders", conn=conn, tracing=True, group_settings=FAST)
    try:
        got = drain(c, 1)
    finally:
        c.close()
    assert [r.headers for r in got] == [{}]
