"""Exactly-once pipelines under kill -9: every input yields its outputs exactly once.

Two pipeline processes (tests/faults/pipeline_worker.py: ``partitions.transform`` from
``events`` to ``derived``, two outputs per input, keyed so they land in different output
partitions) run while a producer writes keyed records; one of them is killed with SIGKILL
again and again mid-stream and restarted (a new member: after the dead one's session its
partitions move, and their new owner first replays what it had not acked). At the end the
group has drained, and the output topic is counted: each acknowledged input's ``(key, seq,
j)`` must be there exactly once -- no duplicate (``dup-app``), none missing (``lost``).
``dup`` counts the inputs that were transformed again after a kill (replays): the run must
have some, or the kills missed.

On a single node the commit is atomic (one server call); ``idempotent`` runs the Cluster's
mode on a single node; ``cluster`` runs it on a local 3-master cluster, the real cross-slot
path. test_pipeline_mutation.py shows that a copy with the dedupe broken fails this check.
The session is 2 s (so the dead members' partitions move within the test's time); everything
else is the library's default.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from partitions._admin.groups import group_lag
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._client.cluster import EmbeddedCluster, free_base_port
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect
from tests.faults.checker import Verdict
from tests.faults.harness import ROOT, Fleet, Worker, read_log, workdir
from tests.faults.scenario import GROUP, TOPIC, VERDICTS, Scenario, assert_verdict, scenario
from tests.helpers import layout, wait_for

pytestmark = pytest.mark.timeout(240)

WORKER = Path(__file__).with_name("pipeline_worker.py")
OUT = "derived"
OUT_PARTITIONS = 4
FANOUT = 2
SESSION_MS = 2000


@dataclass
class Env:
    """Where a pipeline scenario runs: its server's URL, namespace, fleet and connection."""

    url: str
    namespace: str
    fleet: Fleet
    conn: Connection
    dir: Path


@contextlib.contextmanager
def single_node(name: str, fault: str) -> Iterator[Env]:
    with Scenario(name, fault) as s:
        TopicAdmin(s.conn()).create(TopicSpec(OUT, OUT_PARTITIONS))
        yield Env(s.server.url, s.namespace, s.fleet, s.conn(), s.dir)


@contextlib.contextmanager
def on_cluster(name: str) -> Iterator[Env]:
    """A 3-master cluster for this scenario, stopped by pid at the end."""
    with workdir(name) as wd:
        cluster = EmbeddedCluster(wd / "cluster", masters=3, base_port=free_base_port(3))
        fleet: Fleet | None = None
        conn: Connection | None = None
        try:
            try:
                url = cluster.ensure_running(timeout=90)
            except Exception as err:
                pytest.skip(f"cannot start a local cluster: {err}")
            ns = "f" + uuid.uuid4().hex[:10]
            conn = connect(ClientConfig(url=url, namespace=ns, socket_timeout=5))
            admin = TopicAdmin(conn)
            admin.create(TopicSpec(TOPIC, 4))
            admin.create(TopicSpec(OUT, OUT_PARTITIONS))
            fleet = Fleet(wd, url, ns, TOPIC, GROUP)
            yield Env(url, ns, fleet, conn, wd)
        finally:
            if fleet is not None:
                fleet.cleanup()
            if conn is not None:
                conn.close()
            cluster.stop()
            shutil.rmtree(wd / "cluster", ignore_errors=True)


def spawn(env: Env, mode: str, work_ms: float, die_before_ack: int = 0) -> Worker:
    """A pipeline process (a new member each time), in the fleet: the fleet kills it by pid
    at the end whatever happens."""
    env.fleet.counter += 1
    name = f"x{env.fleet.counter}"
    log = env.dir / f"{name}.jsonl"
    cmd = [sys.executable, str(WORKER), "--url", env.url, "--ns", env.namespace,
           "--topic", TOPIC, "--out", OUT, "--group", GROUP, "--log", str(log),
           "--mode", mode, "--fanout", str(FANOUT), "--session-ms", str(SESSION_MS),
           "--work-ms", str(work_ms), "--die-before-ack", str(die_before_ack)]  # fmt: skip
    err = open(env.dir / f"{name}.stderr", "wb")  # noqa: SIM115 - the child owns it
    try:
        popen = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=err, stderr=err)
    finally:
        err.close()
    w = Worker(name, "pipeline", popen, log, group=GROUP)
    env.fleet.workers.append(w)
    return w


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def fn_calls(w: Worker) -> int:
    return sum(1 for e in w.events() if e.get("ev") == "fn")


def outputs(env: Env) -> Counter[tuple[str, int, int]]:
    c = env.conn
    seen: Counter[tuple[str, int, int]] = Counter()
    for p in range(OUT_PARTITIONS):
        for _, f in c.client.xrange(c.keys.stream(layout(c, OUT), p)):
            d = orjson.loads(f[b"value"])
            seen[(d["key"], d["seq"], d["j"])] += 1
    return seen


@scenario("pipeline-kill9", soak={"count": 20000, "rate": 3000, "kills": 30})
def pipeline_kill9(
    *, mode: str = "auto", cluster: bool = False, count: int = 6000, rate: float = 3000,
    kills: int = 8, work_ms: float = 2.0, drain_timeout: float = 90,
) -> Verdict:  # fmt: skip
    """kill -9 one of two pipeline processes ``kills`` times mid-stream (a backlog of
    ``count`` inputs, ``work_ms`` of transform work each), restart it each time; at the end
    every acknowledged input's outputs are in ``derived`` exactly once."""
    where = "cluster" if cluster else ("single node" if mode == "auto" else f"{mode} on 1 node")
    name = f"pipeline-kill9-{'cluster' if cluster else mode}"
    fault = f"kill -9 a pipeline {kills}x mid-stream, restart ({where})"
    ctx = on_cluster(name) if cluster else single_node(name, fault)
    with ctx as env:
        workers = [spawn(env, mode, work_ms) for _ in (0, 1)]
        wait_for(lambda: all(w.events() for w in workers), 30, "pipelines up")
        producer = env.fleet.producer(count=count, keys=12, rate=rate)
        rng = random.Random(17)
        landed = 0
        dies = {0: 0, 1: 0}
        idempotent = cluster or mode == "idempotent"
        for k in range(kills):
            slot = k % 2
            victim = workers[slot]
            before = fn_calls(victim)
            wait_for(lambda v=victim, b=before: fn_calls(v) > b or not v.alive(), 30,
                     f"{victim.name} transforming")  # fmt: skip
            if dies[slot]:  # it kills itself right before an ack (--die-before-ack)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    victim.popen.wait(timeout=20)
            elif victim.alive():
                time.sleep(rng.uniform(0.02, 0.3))
            if group_lag(env.conn, GROUP, TOPIC).total_lag > 0:
                landed += 1  # inputs were still waiting: mid-stream
            if victim.alive():
                env.fleet.kill9(victim)
            else:
                victim.popen.wait(timeout=10)
                victim.expected_exit, victim.stopped = (-signal.SIGKILL,), True
            # In the idempotent mode every other incarnation kills itself right before one
            # of its acks: between an input's outputs and its ack, the window the marks cover
            # (the atomic mode has no such window: its one call is all or nothing).
            self_kill = idempotent and k % 2 == 0 and k < kills - 2
            dies[slot] = rng.randint(3, 40) if self_kill else 0
            workers[slot] = spawn(env, mode, work_ms, dies[slot])
        producer.popen.wait(timeout=drain_timeout)
        drained = _drain(env, drain_timeout)
        for w in workers:
            env.fleet.terminate(w)
        return _verdict(name, fault, env, producer, drained, landed, kills)


def _drain(env: Env, timeout: float) -> str | None:
    last: list[Any] = []

    def done() -> bool:
        try:
            lag = group_lag(env.conn, GROUP, TOPIC)
        except Exception as err:
            last[:] = [err]
            return False
        last[:] = [[(p.partition, p.pending, p.lag) for p in lag.partitions if p.lag]]
        return lag.total_lag == 0

    try:
        wait_for(done, timeout, "the group to drain", step=0.3)
    except AssertionError as err:
        return f"{err}; left: {last}"
    return None


def _verdict(
    name: str, fault: str, env: Env, producer: Worker, drained: str | None, landed: int,
    kills: int,
) -> Verdict:  # fmt: skip
    sent = [e for e in producer.events() if e.get("ev") == "sent"]
    acked = {(e["key"], e["seq"]) for e in sent if e["ok"]}
    v = Verdict(name, fault, produced=len(acked), in_doubt=sum(1 for e in sent if not e["ok"]),
                expected_count=producer.count)  # fmt: skip
    seen = outputs(env)
    want = {(k, s, j) for k, s in acked for j in range(FANOUT)}
    missing = sorted(want - set(seen))
    extra = sorted(set(seen) - want)
    dups = {o: n for o, n in seen.items() if n > 1}
    v.lost = len(missing)
    v.duplicate_appends = sum(n - 1 for n in dups.values()) + len(extra)
    v.processed = sum(1 for k, s in acked if all(seen.get((k, s, j)) == 1 for j in range(FANOUT)))
    calls: Counter[tuple[str, int]] = Counter()
    for w in env.fleet.workers:
        if w.role == "pipeline":
            for e in read_log(w.log):
                if e.get("ev") == "fn":
                    calls[(e["key"], e["seq"])] += 1
    v.duplicated = sum(n - 1 for n in calls.values())
    v.details += [f"missing output {o}" for o in missing[:10]]
    v.details += [f"output {o} written {n} times" for o, n in list(dups.items())[:10]]
    v.details += [f"output {o} of no acknowledged input" for o in extra[:5]]
    for w in env.fleet.workers:
        code = w.popen.poll()
        if code not in w.expected_exit:
            v.bad_exits.append(f"{w.name} ({w.role}) exited {code}")
    if drained:
        v.run_failures.append(drained)
    v.require(landed == kills, f"only {landed} of {kills} kills landed mid-stream")
    v.require(v.duplicated > 0, "no input was transformed again after a kill: the kills missed")
    self_kills = sum(1 for w in env.fleet.workers for e in w.events() if e.get("ev") == "die")
    v.notes.append(f"{self_kills} self-kills right before an ack")
    v.notes.append(f"{landed}/{kills} kills mid-stream, {v.duplicated} inputs replayed")
    VERDICTS.append(v)
    print(v.line())
    for d in v.details[:20]:
        print("  ", d)
    return v


@pytest.mark.parametrize("mode", ["auto", "idempotent"])
def test_pipeline_killed_repeatedly_on_a_single_node_writes_each_output_once(mode: str) -> None:
    assert_verdict(pipeline_kill9(mode=mode))


@pytest.mark.cluster
def test_pipeline_killed_repeatedly_on_a_cluster_writes_each_output_once() -> None:
    assert_verdict(pipeline_kill9(cluster=True))
