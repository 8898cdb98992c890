"""A FastAPI service on partstream's asyncio API: an AsyncProducer and an AsyncConsumer that
live as long as the app (its lifespan).

* ``POST /events`` ``{"key": "...", "value": "..."}`` sends a record and awaits it: the reply
  says where it was appended (topic, partition, id);
* ``GET /events`` says how many records the app's consumer processed and shows the last few.

The consumer runs as a background task (``async for record in consumer``) on the app's event
loop, its heartbeats in a task of their own; a request handler never waits for it. On
shutdown the task is cancelled (nothing is lost: a cut-off read is read again), the consumer
is closed (it commits what was processed and leaves its group, so its partitions move at
once) and the producer flushed.

Run it (the embedded server, or ``PARTSTREAM_URL=redis://...``)::

    uvicorn docs.examples.fastapi_app:app
    curl -X POST localhost:8000/events -H 'content-type: application/json' \\
        -d '{"key": "customer-7", "value": "hello"}'
    curl localhost:8000/events
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from partitions import (
    AsyncConsumer,
    AsyncProducer,
    ClientConfig,
    Record,
    TopicAdmin,
    TopicSpec,
    connect,
    connect_async,
)


class Event(BaseModel):
    key: str
    value: str


class Seen:
    """What the consumer processed: a count and the last ``keep`` records."""

    def __init__(self, keep: int) -> None:
        self.count = 0
        self.last: deque[dict[str, Any]] = deque(maxlen=keep)

    def add(self, record: Record) -> None:
        self.count += 1
        key, value = (b.decode() if b is not None else None for b in (record.key, record.value))
        self.last.append(
            {"key": key, "value": value, "partition": record.partition, "id": record.id}
        )


def ensure_topic(config: ClientConfig | None, name: str, partitions: int) -> None:
    """Create the topic if it does not exist yet (an admin's job, done here for the demo)."""
    with connect(config) as conn:
        TopicAdmin(conn).create(TopicSpec(name, partitions), exist_ok=True)


async def consume(consumer: AsyncConsumer, seen: Seen) -> None:
    # Auto-commit: a record is acked once the loop asks for the next one.
    async for record in consumer:
        seen.add(record)


def create_app(
    config: ClientConfig | None = None,
    *,
    topic: str = "events",
    group: str = "fastapi-example",
    partitions: int = 4,
    keep: int = 10,
) -> FastAPI:
    """The app; ``config`` defaults to the environment (``PARTSTREAM_URL``...)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ensure_topic, config, topic, partitions)
        async with (
            await connect_async(config) as conn,
            AsyncProducer(conn) as producer,  # closed last: flushes
            AsyncConsumer(conn, group, topic) as consumer,  # closed first: commits, leaves
        ):
            seen = Seen(keep)
            task = asyncio.create_task(consume(consumer, seen))
            app.state.producer, app.state.seen = producer, seen
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="partstream example", lifespan=lifespan)

    @app.post("/events")
    async def send(event: Event, request: Request) -> dict[str, Any]:
        producer: AsyncProducer = request.app.state.producer
        meta = await producer.send_and_wait(topic, event.value.encode(), key=event.key)
        return {"topic": meta.topic, "partition": meta.partition, "id": meta.id}

    @app.get("/events")
    async def events(request: Request) -> dict[str, Any]:
        seen: Seen = request.app.state.seen
        return {"count": seen.count, "last": list(seen.last)}

    return app


app = create_app()
