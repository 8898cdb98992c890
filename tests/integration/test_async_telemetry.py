"""The asyncio consumer records the same client metrics and spans as the threaded one:
counts that match what was consumed and acked, ``process`` spans that continue the
producer's spans and are current in the task while the ``async for`` body runs, ``poll``
spans linking each record to its producer span."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from partitions import AsyncConnection, AsyncConsumer, Connection
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.config import ProducerConfig
from partitions._producer.producer import Producer
from partitions._telemetry.metrics import ClientMetrics
from tests.helpers import FAST
from tests.integration.test_client_telemetry import spans, value, where

__all__ = ["spans"]  # the span-recording fixture, shared with the threaded consumer's tests

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]


async def poll_until(c: AsyncConsumer, n: int, timeout: float = 15.0) -> list[object]:
    got: list[object] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got += await c.poll(100, timeout=0.5)
    return got


async def test_async_consumer_metric_counts_match(conn: Connection, aconn: AsyncConnection) -> None:
    TopicAdmin(conn).create(TopicSpec("orders", 4))
    with Producer(conn, ProducerConfig(batch_size=50)) as p:
        for i in range(300):
            p.send("orders", b"v%d" % i, key=b"k%d" % (i % 37))
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    g, t = {"group": "billing"}, {"topic": "orders"}
    c = AsyncConsumer(aconn, "billing", "orders", metrics=metrics, group_settings=FAST)
    async with c:
        assert len(await poll_until(c, 300)) == 300
        assert value(registry, "partstream_consumer_owned_partitions", **g) == 4
    assert value(registry, "partstream_consumer_records_consumed_total", **g, **t) == 300
    assert value(registry, "partstream_consumer_records_acked_total", **g, **t) == 300
    assert value(registry, "partstream_consumer_fetch_latency_seconds_count", **g) >= 1
    assert value(registry, "partstream_consumer_partitions_assigned_total", **g) == 4
    assert value(registry, "partstream_consumer_partitions_revoked_total", **g) == 4  # close
    assert value(registry, "partstream_consumer_owned_partitions", **g) == 0


async def test_async_process_and_poll_spans_continue_the_producer_spans(
    conn: Connection,
    aconn: AsyncConnection,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    TopicAdmin(conn).create(TopicSpec("orders", 2))
    with Producer(conn, tracing=provider) as p:
        futures = [p.send("orders", b"v%d" % i, key=f"k{i}") for i in range(6)]
        ids = {(str(m.partition), m.id) for m in (f.result(10) for f in futures)}
    sends = {where(s): s for s in exporter.get_finished_spans() if s.name == "send orders"}
    assert set(sends) == ids
    tracer = provider.get_tracer("test")
    seen: list[tuple[str, str]] = []
    handlers: list[int] = []
    async with AsyncConsumer(aconn, "g", "orders", tracing=provider, group_settings=FAST) as c:
        records = aiter(c)
        async with asyncio.timeout(15):
            async for rec in records:
                with tracer.start_as_current_span("handler") as h:
                    assert h.parent is not None  # the process span is current here
                    handlers.append(h.parent.span_id)
                seen.append((str(rec.partition), rec.id))
                if len(seen) == 6:
                    break
        await records.aclose()  # type: ignore[attr-defined]  # ends the last process span
        # poll() spans: one per non-empty poll, linked to the records' producer spans.
        with Producer(conn, tracing=provider) as p:
            more = [p.send("orders", b"w%d" % i, key=b"k") for i in range(4)]
            later = {m.id for m in (f.result(10) for f in more)}
        assert len(await poll_until(c, 4)) == 4
    assert set(seen) == ids
    processes = [s for s in exporter.get_finished_spans() if s.name == "process orders"]
    assert len(processes) == 6
    for s in processes:
        send = sends[where(s)].get_span_context()
        assert s.kind is trace.SpanKind.CONSUMER
        assert s.parent is not None and s.parent.span_id == send.span_id
        assert s.attributes["messaging.consumer.group.name"] == "g"
        assert s.context.span_id in handlers
    polls = [s for s in exporter.get_finished_spans() if s.name.startswith("poll")]
    assert sum(s.attributes["messaging.batch.message_count"] for s in polls) == 4
    linked = {link.context.span_id for s in polls for link in s.links}
    new_sends = {
        s.context.span_id
        for s in exporter.get_finished_spans()
        if s.name == "send orders" and s.attributes["messaging.message.id"] in later
    }
    assert linked == new_sends
