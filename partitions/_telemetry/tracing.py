"""OpenTelemetry spans of the producer and the consumer: opt-in, a no-op without opentelemetry-api.

On with ``tracing=True`` (the global tracer provider) or ``tracing=<a TracerProvider>`` on
:class:`~partitions.Producer` and :class:`~partitions.Consumer`. Off (the
default), nothing here runs: ``send()`` and the consumer's loops are the untraced ones and
record headers are left as given.

Spans, with the attributes of the OpenTelemetry messaging semantic conventions
(``messaging.system`` = ``partstream``, ``messaging.destination.name`` = the topic,
``messaging.destination.partition.id``, ``messaging.message.id`` = the entry id,
``messaging.consumer.group.name``, ``messaging.operation.type`` / ``.name``,
``messaging.client.id``):

* ``send {topic}`` (PRODUCER), one per record: started in ``send()`` under the current
  context; its context goes into the record's headers as W3C ``traceparent`` /
  ``tracestate``. It ends when the record is acknowledged (``messaging.message.id`` set) or
  fails (status ERROR, ``error.type``, the exception recorded): it spans the batching.
* ``process {topic}`` (CONSUMER), one per record handed out by ``for record in consumer``:
  its parent is the producer's span from the record's headers (the current context when
  they carry none). It is the current span while the loop body runs, so the handler's own
  spans are its children, and it ends when the loop asks for the next record or leaves
  (``break``, an exception, ``close()``): processing is the loop body.
* ``poll {topic}`` (CLIENT, operation type ``receive``), one per ``poll()`` that returned
  records, from the call to its return, with ``messaging.batch.message_count`` and a link
  to each record's producer span. What the application then does with the batch is up to
  it: a span started under ``telemetry.otel_context(record.headers)`` continues the trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from partitions._telemetry.metrics import TRACEPARENT, TRACESTATE, inject

if TYPE_CHECKING:
    from partitions._base.records import Record
    from partitions._producer.batch import RecordFuture

SYSTEM = "partstream"
_SYSTEM = "messaging.system"
_DESTINATION = "messaging.destination.name"
_PARTITION = "messaging.destination.partition.id"
_MESSAGE_ID = "messaging.message.id"
_GROUP = "messaging.consumer.group.name"
_OP_TYPE = "messaging.operation.type"
_OP_NAME = "messaging.operation.name"
_CLIENT_ID = "messaging.client.id"
_BATCH_COUNT = "messaging.batch.message_count"


class TracerProvider(Protocol):
    """An OpenTelemetry ``TracerProvider`` (the SDK's, or any other)."""

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Any: ...


def _tracer(tracing: bool | TracerProvider | None) -> Any:
    if tracing is None or tracing is False:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider: Any = None if tracing is True else tracing
    return trace.get_tracer("partstream", tracer_provider=provider)


def producer_tracer(tracing: bool | TracerProvider | None, client_id: str) -> ProducerTracer | None:
    """The producer's span maker, or None when tracing is off or OpenTelemetry is absent."""
    tracer = _tracer(tracing)
    return None if tracer is None else ProducerTracer(tracer, client_id)


def consumer_tracer(
    tracing: bool | TracerProvider | None, group: str, client_id: str
) -> ConsumerTracer | None:
    """The consumer's span maker, or None when tracing is off or OpenTelemetry is absent."""
    tracer = _tracer(tracing)
    return None if tracer is None else ConsumerTracer(tracer, group, client_id)


class ProducerTracer:
    """``send`` spans, one per record. Thread-safe (spans end on the sender thread)."""

    def __init__(self, tracer: Any, client_id: str) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._trace = trace
        self._kind = trace.SpanKind.PRODUCER
        self._base = {_SYSTEM: SYSTEM, _OP_TYPE: "send", _OP_NAME: "send"}
        if client_id:
            self._base[_CLIENT_ID] = client_id

    def start(self, topic: str, headers: Any) -> tuple[Any, dict[str, Any]]:
        """Start a record's span; returns it and the headers carrying its context."""
        span = self._tracer.start_span(
            f"send {topic}", kind=self._kind, attributes={**self._base, _DESTINATION: topic}
        )
        return span, inject(headers, context=self._trace.set_span_in_context(span))

    def queued(self, span: Any, future: RecordFuture) -> None:
        """The record is in a batch: its span ends when the batch completes."""
        if not span.is_recording():
            return
        span.set_attribute(_PARTITION, str(future._batch.partition))
        future.add_done_callback(partial(_end_send, span))

    def failed(self, span: Any, err: BaseException) -> None:
        """``send()`` raised: nothing was queued."""
        _set_error(span, err)
        span.end()


def _end_send(span: Any, future: RecordFuture) -> None:
    err = future.exception(0)
    if err is None:
        span.set_attribute(_MESSAGE_ID, future.result(0).id)
    else:
        _set_error(span, err)
    span.end()


def _set_error(span: Any, err: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", type(err).__qualname__)
    span.record_exception(err)
    span.set_status(Status(StatusCode.ERROR, str(err)))


class ConsumerTracer:
    """``process`` spans over iteration, ``poll`` spans over ``poll()``. One thread."""

    def __init__(self, tracer: Any, group: str, client_id: str) -> None:
        from opentelemetry import context, propagate, trace

        self._tracer = tracer
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._base = {_SYSTEM: SYSTEM, _GROUP: group, _CLIENT_ID: client_id}

    def _carrier(self, record: Record) -> dict[str, str] | None:
        if not record.headers:
            return None
        carrier = {}
        for key, value in record.headers.items():
            name = key.lower()
            if name in (TRACEPARENT, TRACESTATE):
                carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else value
        return carrier or None

    def process(self, records: Iterator[Record]) -> Iterator[Record]:
        """``records`` with a ``process`` span around the loop body of each."""
        for rec in records:
            span, token = self.begin(rec)
            try:
                yield rec
            finally:
                self.finish(span, token)

    async def aprocess(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        """:meth:`process` for ``async for`` (the span is current in the awaiting task)."""
        async for rec in records:
            span, token = self.begin(rec)
            try:
                yield rec
            finally:
                self.finish(span, token)

    def begin(self, rec: Record) -> tuple[Any, Any]:
        """Start ``rec``'s ``process`` span (its producer's context as the parent, where the
        headers carry one) and make it current; returns it with the context token."""
        trace, context = self._trace, self._context
        carrier = self._carrier(rec)
        parent = context.get_current()
        if carrier is not None:
            parent = self._propagate.extract(carrier, context=parent)
        span = self._tracer.start_span(
            f"process {rec.topic}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                **self._base,
                _OP_TYPE: "process",
                _OP_NAME: "process",
                _DESTINATION: rec.topic,
                _PARTITION: str(rec.partition),
                _MESSAGE_ID: rec.id,
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def finish(self, span: Any, token: Any) -> None:
        self._context.detach(token)
        span.end()

    def received(self, records: list[Record], start_ns: int) -> None:
        """A ``poll()`` that started at ``start_ns`` (``time.time_ns()``) returned ``records``."""
        trace = self._trace
        links = []
        for rec in records:
            carrier = self._carrier(rec)
            if carrier is not None:
                ctx = trace.get_current_span(self._propagate.extract(carrier)).get_span_context()
                if ctx.is_valid:
                    links.append(trace.Link(ctx))
        topics = {r.topic for r in records}
        attributes: dict[str, Any] = {
            **self._base,
            _OP_TYPE: "receive",
            _OP_NAME: "poll",
            _BATCH_COUNT: len(records),
        }
        name = "poll"
        if len(topics) == 1:
            (topic,) = topics
            attributes[_DESTINATION] = topic
            name = f"poll {topic}"
            parts = {r.partition for r in records}
            if len(parts) == 1:
                attributes[_PARTITION] = str(parts.pop())
        span = self._tracer.start_span(
            name, kind=trace.SpanKind.CLIENT, attributes=attributes, links=links,
            start_time=start_ns,
        )  # fmt: skip
        span.end()
