"""docs/examples/fastapi_app.py runs: records POSTed to the API are sent by the app's
AsyncProducer and consumed by its AsyncConsumer (GET shows them); shutting the app down
commits what was processed and leaves the group."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from partitions import ClientConfig, Connection, GroupAdmin
from tests.helpers import layout, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fastapi_app.py"


def example() -> ModuleType:
    pytest.importorskip("fastapi")
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_records_posted_to_the_api_are_consumed_by_the_app(
    conn: Connection, client_config: ClientConfig
) -> None:
    from fastapi.testclient import TestClient

    app = example().create_app(client_config, topic="events", group="web", keep=3)
    sent = []
    with TestClient(app) as client:  # runs the lifespan: producer and consumer start
        for i in range(5):
            reply = client.post("/events", json={"key": f"k{i % 2}", "value": f"v{i}"})
            assert reply.status_code == 200, reply.text
            sent.append(reply.json())
        assert all(s["topic"] == "events" and 0 <= s["partition"] < 4 for s in sent)

        def seen() -> dict[str, Any] | None:
            body = client.get("/events").json()
            return body if body["count"] == 5 else None

        body = wait_for(seen, timeout=15, what="the app's consumer to process 5 records")
        # The last three processed, each one of those sent, with the value sent.
        assert len(body["last"]) == 3
        by_place = {(s["partition"], s["id"]): f"v{i}" for i, s in enumerate(sent)}
        for r in body["last"]:
            assert by_place[(r["partition"], r["id"])] == r["value"]
    # Shut down: the consumer committed what it processed and left; nothing is pending.
    pending = sum(
        conn.client.xpending(conn.keys.stream(layout(conn, "events"), p), "web")["pending"]
        for p in range(4)
    )
    assert pending == 0
    assert GroupAdmin(conn).describe("web").members == ()
