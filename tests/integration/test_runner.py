"""The runner (``partitions.run`` / ``partstream run``): key-ordered concurrency, retries,
health, rebalances and shutdown, with the library's default consumer and group settings
unless a test says otherwise.

* Up to ``concurrency`` records run at once, never two of one key, each key in partition
  order (sync handlers on threads, async ones as tasks); every record is acked once done.
* A failing record is retried with back-off while its key waits, then dead-lettered with
  reason ``retries_exhausted``; the key's later records follow it.
* ``GET /health`` answers while it runs; SIGTERM lets running records finish, acks them and
  leaves; kill -9 during concurrent handling loses nothing, keeps per-key order in each
  process, and redoes only records that were not yet acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from partitions import Record, RetryPolicy, run
from partitions._admin.deadletter import DeadLetters
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.settings import GroupSettings
from partitions._client.connection import Connection
from partitions._producer.producer import Producer
from partitions._runner.runner import Runner
from tests.helpers import layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def make_topic(conn: Connection, name: str, records: int, keys: int, partitions: int = 4) -> None:
    TopicAdmin(conn).create(TopicSpec(name, partitions=partitions))
    with Producer(conn) as p:
        for i in range(records):
            p.send(name, f"{i}", key=f"k{i % keys}")


def pending(conn: Connection, topic: str, group: str, partitions: int = 4) -> int:
    total = 0
    for p in range(partitions):
        key = conn.keys.stream(layout(conn, topic), p)
        total += int(conn.client.xpending(key, group)["pending"])
    return total


def run_in_thread(**kwargs: Any) -> tuple[threading.Thread, threading.Event, dict[str, Any]]:
    stop = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["stats"] = run(stop=stop, handle_signals=False, **kwargs)
        except BaseException as err:  # surfaced by the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, out


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Recorder:
    """A handler that sleeps, then notes the record; tracks how many run at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.max_active = 0
        self.overlap_of_a_key = 0
        self.done: list[tuple[str, int]] = []

    def _enter(self, record: Record) -> str:
        key = (record.key or b"").decode()
        with self.lock:
            if key in self.active:
                self.overlap_of_a_key += 1
            self.active.add(key)
            self.max_active = max(self.max_active, len(self.active))
        return key

    def _leave(self, record: Record, key: str) -> None:
        with self.lock:
            self.active.discard(key)
            self.done.append((key, int((record.value or b"0").decode())))

    def __call__(self, record: Record) -> None:
        key = self._enter(record)
        time.sleep(self.delay)
        self._leave(record, key)


def check_key_order(done: list[tuple[str, int]]) -> None:
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, value in done:
        per_key[key].append(value)
    for key, values in per_key.items():
        assert values == sorted(values), f"key {key} out of order: {values[:10]}"


@pytest.mark.parametrize("concurrency", [1, 8])
def test_runs_keys_side_by_side_and_each_key_in_order(conn: Connection, concurrency: int) -> None:
    make_topic(conn, "orders", 400, keys=40)
    handler = Recorder(0.005)
    thread, stop, out = run_in_thread(
        handler=handler, topics="orders", group="g", concurrency=concurrency, conn=conn
    )
    wait_until(lambda: len(handler.done) >= 400 or "error" in out, 120, "400 records handled")
    stop.set()
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert sorted(v for _, v in handler.done) == list(range(400))  # each once
    check_key_order(handler.done)
    assert handler.overlap_of_a_key == 0
    assert 1 < handler.max_active <= 8 if concurrency == 8 else handler.max_active == 1
    assert out["stats"].handled == 400
    assert pending(conn, "orders", "g") == 0  # every record acked


def test_async_handler_runs_as_tasks_with_the_same_order(conn: Connection) -> None:
    import asyncio

    make_topic(conn, "events", 200, keys=20)
    seen: list[tuple[str, int]] = []
    active: set[str] = set()
    peak = [0]

    async def handler(record: Record) -> None:
        key = (record.key or b"").decode()
        assert key not in active
        active.add(key)
        peak[0] = max(peak[0], len(active))
        await asyncio.sleep(0.005)
        active.discard(key)
        seen.append((key, int((record.value or b"0").decode())))

    thread, stop, out = run_in_thread(
        handler=handler, topics="events", group="g", concurrency=16, conn=conn
    )
    wait_until(lambda: len(seen) >= 200 or "error" in out, 60, "200 records handled")
    stop.set()
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert sorted(v for _, v in seen) == list(range(200))
    check_key_order(seen)
    assert 1 < peak[0] <= 16
    assert pending(conn, "events", "g") == 0


def test_a_failing_record_is_retried_with_backoff_then_dead_lettered_and_its_key_waits(
    conn: Connection,
) -> None:
    make_topic(conn, "pay", 40, keys=4, partitions=1)
    attempts: dict[int, list[float]] = defaultdict(list)
    done: list[tuple[str, int]] = []

    def handler(record: Record) -> None:
        value = int((record.value or b"0").decode())
        attempts[value].append(time.monotonic())
        if value == 5 or (value == 9 and len(attempts[value]) < 3):
            raise ValueError(f"cannot handle {value}")
        done.append(((record.key or b"").decode(), value))

    policy = RetryPolicy(max_attempts=3, backoff_ms=50, jitter=0)
    thread, stop, out = run_in_thread(
        handler=handler, topics="pay", group="g", concurrency=4, retry=policy, conn=conn
    )
    wait_until(lambda: len(done) >= 39 or "error" in out, 60, "39 records handled")
    stop.set()
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert len(attempts[5]) == 3 and len(attempts[9]) == 3  # 9 succeeded on its third
    gaps = [b - a for a, b in zip(attempts[5], attempts[5][1:], strict=False)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095  # 50 ms, then 100 ms
    # Key k1 (values 1, 5, 9, ...) waited for 5's attempts: 9 came after 5 gave up.
    k1 = [v for k, v in done if k == "k1"]
    assert k1 == sorted(k1) and 5 not in k1 and 9 in k1
    assert attempts[9][0] > attempts[5][-1]
    dead = DeadLetters(conn).list("pay")
    assert [(d.record.value, d.reason) for d in dead] == [(b"5", "retries_exhausted")]
    assert dead[0].error == "ValueError: cannot handle 5"  # the last attempt's error
    stats = out["stats"]
    assert (stats.handled, stats.dead_lettered, stats.retried) == (39, 1, 4)
    assert pending(conn, "pay", "g", partitions=1) == 0


def test_non_blocking_retries_let_the_key_go_on_then_redeliver_after_the_backoff(
    conn: Connection,
) -> None:
    make_topic(conn, "feed", 40, keys=4, partitions=1)
    attempts: dict[int, list[float]] = defaultdict(list)
    done: list[tuple[str, int]] = []

    def handler(record: Record) -> None:
        value = int((record.value or b"0").decode())
        attempts[value].append(time.monotonic())
        if value == 1 and len(attempts[value]) < 3:
            raise TimeoutError("upstream busy")
        if value == 2:
            raise ValueError("never")
        done.append(((record.key or b"").decode(), value))

    policy = RetryPolicy(max_attempts=3, backoff_ms=300, jitter=0, blocking=False)
    thread, stop, out = run_in_thread(
        handler=handler, topics="feed", group="g", concurrency=2, retry=policy, conn=conn
    )
    wait_until(lambda: len(done) >= 39 or "error" in out, 60, "39 records handled")
    stop.set()
    thread.join(30)
    assert "error" not in out, out.get("error")
    k1 = [v for k, v in done if k == "k1"]  # values 1, 5, 9, ...
    # 5 and 9 did not wait for 1's back-offs (300 + 600 ms): they were handled before it.
    assert k1.index(5) < k1.index(1) and sorted(k1) == list(range(1, 40, 4))
    assert attempts[1][1] - attempts[1][0] >= 0.29 and attempts[1][2] - attempts[1][1] >= 0.59
    assert len(attempts[2]) == 3
    dead = DeadLetters(conn).list("feed")
    assert [(d.record.value, d.reason) for d in dead] == [(b"2", "retries_exhausted")]
    assert dead[0].error == "ValueError: never"
    assert pending(conn, "feed", "g", partitions=1) == 0


def test_a_record_the_server_redelivers_while_it_is_being_handled_is_handled_once(
    conn: Connection,
) -> None:
    # A reclaim delivers an entry pending longer than reclaim_idle_ms again, to its owner
    # too: the runner holds the first copy, so the second is acked with it, not handled.
    make_topic(conn, "long", 6, keys=6, partitions=1)
    seen: list[int] = []

    def handler(record: Record) -> None:
        seen.append(int((record.value or b"0").decode()))
        time.sleep(2.5)

    settings = GroupSettings(reclaim_idle_ms=500)
    thread, stop, out = run_in_thread(
        handler=handler, topics="long", group="g", concurrency=6, conn=conn,
        group_settings=settings,
    )  # fmt: skip
    wait_until(lambda: len(seen) >= 6 or "error" in out, 30, "6 records started")
    time.sleep(4)  # past the handlers and several reclaim passes
    stop.set()
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert sorted(seen) == list(range(6)), seen
    assert out["stats"].handled == 6
    assert pending(conn, "long", "g", partitions=1) == 0


def test_health_endpoint_answers_while_running_and_a_rebalance_waits_for_running_records(
    conn: Connection,
) -> None:
    make_topic(conn, "jobs", 800, keys=24)  # 10 s of work for one runner alone
    first, second = Recorder(0.05), Recorder(0.05)
    runner = Runner(first, "jobs", "g", concurrency=4, conn=conn)
    out1: dict[str, Any] = {}

    def target() -> None:
        try:
            out1["stats"] = runner.run(health_port=0, health_host="127.0.0.1", signals=False)
        except BaseException as err:
            out1["error"] = err

    t1 = threading.Thread(target=target, daemon=True)
    t1.start()
    wait_until(lambda: len(first.done) >= 10 or "error" in out1, 60, "the first runner")
    url = f"http://127.0.0.1:{runner.health.port}/health"
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "ok" and body["group"] == "g" and len(body["partitions"]) == 4
    assert body["handled"] >= 10 and body["member_id"] == runner.consumer.member_id
    # A second member joins: the first gives up half its partitions, finishing (and acking)
    # their running records first, so nothing is handled twice.
    t2, stop2, out2 = run_in_thread(
        handler=second, topics="jobs", group="g", concurrency=4, conn=conn
    )
    wait_until(lambda: len(first.done) + len(second.done) >= 800, 120, "all 800 handled")
    runner.stop.set()
    stop2.set()
    t1.join(30)
    t2.join(30)
    assert "error" not in out1 and "error" not in out2, (out1.get("error"), out2.get("error"))
    values = sorted(v for _, v in first.done + second.done)
    assert values == list(range(800)), "a record was lost or handled twice"
    assert second.done, "the second runner never got partitions"
    check_key_order(first.done)
    check_key_order(second.done)
    assert pending(conn, "jobs", "g") == 0
    with pytest.raises(OSError):  # the endpoint went away with the runner
        urllib.request.urlopen(url, timeout=2)


def _cli(conn: Connection, topic: str, log: Path, *extra: str, delay: float = 0.005) -> Any:
    env = {
        **os.environ,
        "RUNNER_LOG": str(log),
        "RUNNER_DELAY_S": str(delay),
        "PARTSTREAM_URL": conn.url,
        "PARTSTREAM_NAMESPACE": conn.config.namespace,
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "partitions", "run", "tests.integration.runner_handlers:slow",
           "--topic", topic, "--group", "g", *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(log: Path) -> list[dict[str, Any]]:
    """The log's complete lines: a handler may be writing the last one while this reads (a
    read can see part of a concurrent write), so a line without its newline is left for the
    next read."""
    if not log.exists():
        return []
    text = log.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def test_sigterm_finishes_running_records_acks_them_and_leaves(
    conn: Connection, tmp_path: Path
) -> None:
    make_topic(conn, "mail", 2000, keys=100)
    log = tmp_path / "log.jsonl"
    proc = _cli(conn, "mail", log, "--concurrency", "8", delay=0.02)
    try:
        wait_until(lambda: len(_lines(log)) >= 100, 60, "records handled")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    stats = json.loads(out.decode().strip().splitlines()[-1])
    handled = _lines(log)
    assert stats["handled"] == len(handled) < 2000  # it stopped early, acking what it did
    # Everything it handled is acked; what it had queued went back unacked: a second run
    # handles exactly the rest, nothing twice.
    second = _cli(conn, "mail", log, "--concurrency", "8", delay=0.0)
    try:
        wait_until(lambda: len(_lines(log)) >= 2000, 90, "the rest handled")
        time.sleep(0.5)
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    values = sorted(int(line["value"]) for line in _lines(log))
    assert values == list(range(2000)), "a record was lost or handled twice"
    assert pending(conn, "mail", "g") == 0


def test_kill_9_during_concurrent_handling_loses_nothing_and_redoes_only_unacked_records(
    conn: Connection, tmp_path: Path
) -> None:
    make_topic(conn, "ledger", 3000, keys=200)
    log = tmp_path / "log.jsonl"
    session = ("--session-timeout-ms", "3000", "--heartbeat-ms", "500")
    proc = _cli(conn, "ledger", log, "--concurrency", "16", *session, delay=0.01)
    try:
        wait_until(lambda: len(_lines(log)) >= 300, 60, "records handled")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = _lines(log)
    second = _cli(conn, "ledger", log, "--concurrency", "16", *session, delay=0.0)
    try:
        wait_until(lambda: len({line["value"] for line in _lines(log)}) >= 3000, 120, "all")
        time.sleep(0.5)
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    lines = _lines(log)
    assert {int(line["value"]) for line in lines} == set(range(3000)), "a record was lost"
    # Per key, each process handled its records in order.
    for pid in {line["pid"] for line in lines}:
        check_key_order([(line["key"], int(line["value"])) for line in lines if line["pid"] == pid])
    # Redone: only what the killed process had not acknowledged, at most what it could
    # hold (8 x concurrency queued or running, plus records done but not yet acked).
    redone = len(lines) - 3000
    assert 0 <= redone <= 16 * 8 + 16, redone
    assert len(before) >= 300
    assert pending(conn, "ledger", "g") == 0
