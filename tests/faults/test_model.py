"""A stateful hypothesis model of produce / consume / ack / crash / rebalance / trim,
run against a real private server (in-process clients, small and bounded).

Hypothesis picks sequences of operations; every processed record and commit outcome is
logged in the worker format, and at the end of each example the group is drained and the
same checker as the process scenarios verifies L, G, O, D. A *crash* stops a consumer's
heartbeat thread and abandons it without closing (its unacked records must move to another
member after the session); *rebalance* adds or closes members; *trim* removes a partition's
oldest entries: those a member had read but not acked may reach the dead-letter stream
with reason ``trimmed`` (if they are redelivered before they are acked: any other dead
letter fails the example); those never delivered are deleted by the operator's decision
(retention) and are excused from L. The session is 600 ms (a model about that setting: a
crash must be recovered within an example); the producer uses its defaults.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from partitions._admin.groups import group_lag
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import NotOwnerError
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from tests.faults.checker import DeadLetter, Verdict, check
from tests.faults.harness import workdir
from tests.faults.scenario import VERDICTS
from tests.helpers import ServerProc, layout

pytestmark = pytest.mark.timeout(150)

TOPIC, GROUP, PARTS = "model", "g", 2
SETTINGS = GroupSettings(session_timeout_ms=600, heartbeat_interval_ms=150, reclaim_idle_ms=60_000)
URL: list[str] = []
TOTAL = Verdict("hypothesis-model", "produce/consume/ack/crash/rebalance/trim")


class Model(RuleBasedStateMachine):
    """The model: what was sent, handed out, processed and acked, and what was trimmed."""

    def __init__(self) -> None:
        super().__init__()
        ns = "m" + uuid.uuid4().hex[:10]
        self.conn: Connection = connect(ClientConfig(url=URL[0], namespace=ns))
        TopicAdmin(self.conn).create(TopicSpec(TOPIC, PARTS))
        self.producer = Producer(self.conn)
        self.consumers: list[Consumer] = []
        self.crashed: list[Consumer] = []
        self.handed: dict[str, list[tuple[Record, int]]] = {}
        self.sent: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.seq: dict[str, int] = {}
        self.excused: set[tuple[int, str]] = set()
        self.trimmed_pending: dict[tuple[int, str], str] = {}

    # -- operations ----------------------------------------------------------------------------
    @rule(key=st.sampled_from(["a", "b", "c"]), n=st.integers(1, 4))
    def produce(self, key: str, n: int) -> None:
        futs = []
        for _ in range(n):
            seq = self.seq[key] = self.seq.get(key, 0) + 1
            value = json.dumps({"key": key, "seq": seq}).encode()
            futs.append((seq, self.producer.send(TOPIC, value, key=key)))
        for seq, f in futs:
            md = f.result(10)
            self.sent.append(
                {"ev": "sent", "key": key, "seq": seq, "ok": True, "p": md.partition, "id": md.id}
            )

    @precondition(lambda self: len(self.consumers) < 3)
    @rule()
    def add_consumer(self) -> None:
        cfg = ConsumerConfig(auto_commit=False, block_ms=50, fetch_count=3)
        c = Consumer(GROUP, TOPIC, conn=self.conn, config=cfg, group_settings=SETTINGS)
        self.consumers.append(c)
        self.handed[c.member_id] = []

    @precondition(lambda self: self.consumers)
    @rule(i=st.integers(0, 2))
    def consume(self, i: int) -> None:
        c = self.consumers[i % len(self.consumers)]
        t0 = time.time()
        batch = c.poll(max_records=3, timeout=0.2)
        t1 = time.time()
        for r in batch:
            fence = c.fence(r.topic, r.partition)
            token = int(fence.split(" ")[1]) if fence is not None else -1
            data = json.loads(r.value or b"{}")
            self.log.append(
                {"ev": "proc", "p": r.partition, "id": r.id, "key": data["key"],
                 "seq": data["seq"], "member": c.member_id, "group": GROUP, "token": token,
                 "t0": t0, "t1": t1, "t": time.time()}
            )  # fmt: skip
            self.handed[c.member_id].append((r, token))

    @precondition(lambda self: self.consumers)
    @rule(i=st.integers(0, 2))
    def ack(self, i: int) -> None:
        c = self.consumers[i % len(self.consumers)]
        self._commit(c)

    @precondition(lambda self: self.consumers)
    @rule(i=st.integers(0, 2))
    def crash(self, i: int) -> None:
        c = self.consumers.pop(i % len(self.consumers))
        c._runner._stop.set()  # kill -9 of its heartbeats; the object is abandoned
        c._runner._wake.set()
        self.crashed.append(c)

    @precondition(lambda self: self.consumers)
    @rule(i=st.integers(0, 2))
    def close(self, i: int) -> None:
        c = self.consumers.pop(i % len(self.consumers))
        self._commit(c)
        c.close()

    @rule(p=st.integers(0, PARTS - 1), keep=st.integers(0, 3))
    def trim(self, p: int, keep: int) -> None:
        key = self.conn.keys.stream(layout(self.conn, TOPIC), p)
        before = {e[0].decode() for e in self.conn.client.xrange(key)}
        pending = self._pending(p)
        TopicAdmin(self.conn).trim(TOPIC, p, max_length=keep)
        after = {e[0].decode() for e in self.conn.client.xrange(key)}
        # Removed and never delivered: deleted by the operator's retention decision.
        self.excused |= {(p, rid) for rid in before - after if rid not in pending}
        # Removed while pending: dead-lettered as trimmed if redelivered before its ack.
        self.trimmed_pending |= {(p, rid): "trimmed" for rid in before - after if rid in pending}

    # -- helpers -------------------------------------------------------------------------------
    def _pending(self, p: int) -> set[str]:
        key = self.conn.keys.stream(layout(self.conn, TOPIC), p)
        try:
            rows = self.conn.client.xpending_range(key, GROUP, "-", "+", 10_000)
        except Exception:
            return set()
        return {r["message_id"].decode() for r in rows}

    def _commit(self, c: Consumer) -> None:
        items = self.handed[c.member_id]
        self.handed[c.member_id] = []
        by_tp: dict[tuple[int, int], list[Record]] = {}
        for r, token in items:
            by_tp.setdefault((r.partition, token), []).append(r)
        for (p, token), recs in by_tp.items():
            t = time.time()
            try:
                if c.fence(TOPIC, p) is None:
                    out = "dropped"
                else:
                    c.commit(recs)
                    out = "ok"
            except NotOwnerError:
                out = "refused"
            self.log.append(
                {"ev": "ack", "p": p, "ids": [r.id for r in recs], "member": c.member_id,
                 "group": GROUP, "token": token, "outcome": out, "t": t}
            )  # fmt: skip

    def teardown(self) -> None:
        try:
            if not self.consumers:
                self.add_consumer()
            end = time.monotonic() + 20
            while time.monotonic() < end:
                for i in range(len(self.consumers)):
                    self.consume(i)
                    self.ack(i)
                if group_lag(self.conn, GROUP, TOPIC).total_lag == 0:
                    break
            dlq = [
                DeadLetter(p, f[b"dlq.id"].decode(), f[b"dlq.group"].decode(),
                           f[b"dlq.reason"].decode())
                for p in range(PARTS)
                for _, f in self.conn.client.xrange(self.conn.keys.dlq(layout(self.conn, TOPIC), p))
                if b"dlq.id" in f
            ]  # fmt: skip
            present = {
                (p, rid.decode())
                for p in range(PARTS)
                for rid, _ in self.conn.client.xrange(
                    self.conn.keys.stream(layout(self.conn, TOPIC), p)
                )
            }
            sends = [e for e in self.sent if (e["p"], e["id"]) not in self.excused]
            v = check("hypothesis-model", "model", sends, self.log, dlq, groups=[GROUP],
                      may_dead=self.trimmed_pending, present=present)  # fmt: skip
            for name in ("produced", "in_doubt", "processed", "duplicated", "lost",
                         "dead_lettered", "unexpected_dead", "order_violations",
                         "fencing_violations", "duplicate_violations", "duplicate_appends",
                         "zombie_refused"):  # fmt: skip
                setattr(TOTAL, name, getattr(TOTAL, name) + getattr(v, name))
            TOTAL.details += v.details
            TOTAL.run_failures += v.run_failures
            assert v.ok, v.report()
        finally:
            for c in self.consumers:
                c.close()
            for c in self.crashed:
                c._runner.close(leave=False)
            self.producer.close(5)
            self.conn.close()


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with workdir("model") as d:
        server = ServerProc(Path(d), "none").start()
        try:
            yield server.url
        finally:
            server.stop()


def test_stateful_model(model_server: str) -> None:
    """Hypothesis-driven operation sequences keep L, G, O, D (12 examples x <= 25 steps)."""
    URL[:] = [model_server]
    start = time.monotonic()
    VERDICTS.append(TOTAL)
    run = settings(
        max_examples=12,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )(Model).TestCase
    run("runTest").runTest()
    TOTAL.notes.append(f"12 examples; {time.monotonic() - start:.0f}s")
    assert TOTAL.ok, TOTAL.report()
