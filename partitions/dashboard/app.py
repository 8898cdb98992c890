"""The dashboard web app (Starlette): one page, live state by server-sent events, actions.

Every action goes through partstream's public API (Producer, GroupAdmin, TopicAdmin, group
seek) or the demo fleet (processes); the app keeps no state of its own beyond the
fleet and the last snapshot.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin
from partitions._base.errors import ConfigError, PartstreamError
from partitions._base.settings import GroupSettings
from partitions._client.connection import Connection
from partitions._producer.producer import Producer
from partitions.dashboard.fleet import Fleet
from partitions.dashboard.snapshot import Snapshots

TYPES = ["created", "paid", "packed", "shipped", "delivered"]


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Dashboard:
    """State shared by the routes: connection, producer, fleet, snapshots."""

    def __init__(
        self,
        conn: Connection,
        topic: str,
        fleet: Fleet | None,
        *,
        refresh_s: float = 1.0,
        tenants: int = 24,
    ) -> None:
        self.conn = conn
        self.topic = topic
        self.fleet = fleet
        self.refresh_s = refresh_s
        self.tenants = [f"tenant-{i:02d}" for i in range(tenants)]
        self.snapshots = Snapshots(conn, [topic])
        self._producer: Producer | None = None
        self._steps: dict[str, int] = {}
        self._rng = random.Random()
        # Steps restart in every dashboard run; workers check order per (run, tenant).
        self._run = f"{random.getrandbits(32):08x}"

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self.conn)
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()

    # -- actions (blocking; run in a worker thread) -----------------------------------------
    def produce(self, count: int, tenant: str | None, region: str | None) -> dict[str, Any]:
        meta = TopicAdmin(self.conn).get(self.topic)
        regions = list(meta.spec.regions)
        futures = []
        latencies: list[float] = []  # ms from send() to acknowledged, per record
        for _ in range(count):
            t = tenant or self._rng.choice(self.tenants)
            reg = region or (regions[int(t[-2:]) % len(regions)] if regions else None)
            step = self._steps.get(t, 0)
            self._steps[t] = step + 1
            event = {
                "run": self._run,
                "tenant": t,
                "region": reg,
                "step": step,
                "type": TYPES[step % len(TYPES)],
                "amount": self._rng.randint(5, 500),
            }
            fut = self.producer.send(self.topic, event, key=t, region=reg)
            fut.add_done_callback(_latency(latencies, time.perf_counter()))
            futures.append(fut)
        self.producer.flush()
        parts = sorted({f.result().partition for f in futures})
        self.snapshots.history.note_append(latencies)
        return {"produced": count, "partitions": parts}

    def create_group(self, name: str) -> dict[str, Any]:
        settings = GroupAdmin(self.conn)
        demo = GroupSettings(
            session_timeout_ms=3000,
            heartbeat_interval_ms=500,
            max_deliveries=3,
            reclaim_idle_ms=5000,
        )
        created = settings.create(name, demo, exist_ok=True)
        worker = self._fleet().add(name)
        return {"group": name, "created": created, "worker": worker.worker_id}

    def reset_group(self, group: str, to: str) -> dict[str, Any]:
        from partitions._admin.groups import execute_group_seek, plan_group_seek

        # A live reset, as the demo wants: members keep reading from the new position.
        plan = plan_group_seek(self.conn, group, to, topic=self.topic)
        return execute_group_seek(self.conn, plan, force=True).to_dict()

    def reclaim(self, group: str, min_idle_ms: int = 1000) -> dict[str, Any]:
        """Reclaim stuck entries now: each owner redelivers its entries idle past
        ``min_idle_ms`` on its next read (see :func:`partitions._admin.groups.reclaim_now`)."""
        from partitions._admin.groups import reclaim_now

        return reclaim_now(self.conn, group, topic=self.topic, min_idle_ms=min_idle_ms).to_dict()

    def trim(self, partition: int, max_length: int) -> dict[str, Any]:
        removed = TopicAdmin(self.conn).trim(self.topic, partition, max_length=max_length)
        return {"partition": partition, "removed": removed}

    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise ConfigError("this dashboard has no consumer fleet (started read-only)")
        return self.fleet

    def fail_next(self, tenant: str, count: int) -> dict[str, Any]:
        self._fleet().fail_next(tenant, count)
        return {"tenant": tenant, "count": count}

    def worker_action(self, worker_id: str, action: str) -> dict[str, Any]:
        fleet = self._fleet()
        fn = {"remove": fleet.remove, "kill": fleet.kill, "pause": fleet.pause,
              "resume": fleet.resume}.get(action)  # fmt: skip
        if fn is None:
            raise ConfigError(f"unknown action {action!r}")
        w = fn(worker_id)
        return {"worker_id": w.worker_id, "state": w.state, "pid": w.pid}

    def state(self) -> dict[str, Any]:
        workers = self.fleet.workers() if self.fleet else []
        snap = self.snapshots.snapshot(workers)
        snap["topic"] = self.topic
        snap["tenants"] = self.tenants
        snap["read_only"] = self.fleet is None
        return snap


def _latency(into: list[float], sent: float) -> Any:
    def done(_: Any) -> None:
        into.append((time.perf_counter() - sent) * 1000)  # list.append is atomic

    return done


# The vendored chart library (uPlot, MIT; see static/README.md), served from the package.
STATIC = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}


def create_app(dash: Dashboard) -> Starlette:
    """The ASGI app serving ``dash``."""

    async def run(fn: Any, *args: Any) -> Response:
        try:
            result = await anyio.to_thread.run_sync(fn, *args)
        except (PartstreamError, KeyError, ValueError) as err:
            return _Json({"error": f"{type(err).__name__}: {err}"}, status_code=400)
        return _Json(result)

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def index(_: Request) -> Response:
        page = resources.files("partitions.dashboard").joinpath("index.html").read_text()
        return HTMLResponse(page)

    async def state(_: Request) -> Response:
        return await run(dash.state)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", status_code=404)
        data = resources.files("partitions.dashboard").joinpath("static", name).read_bytes()
        headers = {"Cache-Control": "max-age=86400"}
        return Response(data, media_type=STATIC[name], headers=headers)

    async def history(_: Request) -> Response:
        return _Json(dash.snapshots.history.all())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            while not await request.is_disconnected():
                try:
                    snap = await anyio.to_thread.run_sync(dash.state)
                    yield b"data: " + orjson.dumps(snap) + b"\n\n"
                except PartstreamError as err:
                    yield b"event: failure\ndata: " + orjson.dumps({"error": str(err)}) + b"\n\n"
                await asyncio.sleep(dash.refresh_s)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def produce(request: Request) -> Response:
        b = await body(request)
        count = max(1, min(int(b.get("count", 100)), 100_000))
        return await run(dash.produce, count, b.get("tenant") or None, b.get("region") or None)

    async def add_worker(request: Request) -> Response:
        b = await body(request)
        return await run(lambda: {"worker_id": dash._fleet().add(str(b["group"])).worker_id})

    async def worker_action(request: Request) -> Response:
        return await run(
            dash.worker_action, request.path_params["wid"], request.path_params["action"]
        )

    async def create_group(request: Request) -> Response:
        return await run(dash.create_group, str((await body(request))["name"]))

    async def reset_group(request: Request) -> Response:
        b = await body(request)
        return await run(dash.reset_group, request.path_params["group"], str(b["to"]))

    async def reclaim(request: Request) -> Response:
        b = await body(request)
        idle = int(b.get("min_idle_ms", 1000))
        return await run(dash.reclaim, request.path_params["group"], idle)

    async def trim(request: Request) -> Response:
        b = await body(request)
        return await run(dash.trim, int(b["partition"]), int(b["max_length"]))

    async def fail(request: Request) -> Response:
        b = await body(request)
        return await run(dash.fail_next, str(b["tenant"]), int(b["count"]))

    async def latest(request: Request) -> Response:
        p = int(request.query_params.get("partition", 0))
        return await run(dash.snapshots.latest, dash.topic, p, 10)

    async def replay_view(request: Request) -> Response:
        start = request.query_params.get("from", "earliest")
        count = max(1, min(int(request.query_params.get("count", 20)), 500))
        return await run(dash.snapshots.replay, dash.topic, start, count)

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/history", history),
        Route("/static/{name}", static),
        Route("/events", events),
        Route("/api/produce", produce, methods=["POST"]),
        Route("/api/workers", add_worker, methods=["POST"]),
        Route("/api/workers/{wid}/{action}", worker_action, methods=["POST"]),
        Route("/api/groups", create_group, methods=["POST"]),
        Route("/api/groups/{group}/reset", reset_group, methods=["POST"]),
        Route("/api/groups/{group}/reclaim", reclaim, methods=["POST"]),
        Route("/api/trim", trim, methods=["POST"]),
        Route("/api/fail", fail, methods=["POST"]),
        Route("/api/latest", latest),
        Route("/api/replay", replay_view),
    ]
    return Starlette(routes=routes)
