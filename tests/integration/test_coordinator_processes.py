"""Real member processes on a 12-partition topic: convergence, graceful leave, kill -9,
SIGSTOP past the session timeout, static restart. Session 1000 ms, heartbeat 200 ms."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from partitions._admin.groups import GroupAdmin
from partitions._base.errors import UnknownGroupError
from partitions._base.keys import TopicLayout
from partitions._base.types import GroupDescription, TopicPartition
from partitions._client.connection import Connection
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(45)]

SCRIPT = Path(__file__).with_name("coordinator_member.py")
ROOT = SCRIPT.parents[2]
PARTS = 12
GROUP = "g"
TOPIC = "orders"


@dataclass
class Proc:
    member_id: str
    popen: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def has(self, ev: str) -> bool:
        return any(e["ev"] == ev for e in list(self.events))


class Fleet:
    """Spawns member processes and always kills them, by pid, at the end."""

    def __init__(self, url: str, conn: Connection) -> None:
        self.url, self.conn = url, conn
        self.admin = GroupAdmin(conn)
        self.procs: list[Proc] = []

    def spawn(self, member_id: str, instance_id: str | None = None, *extra: str) -> Proc:
        cmd = [sys.executable, str(SCRIPT), "--url", self.url, "--ns", self.conn.keys.ns]
        cmd += ["--group", GROUP, "--topic", TOPIC, "--partitions", str(PARTS)]
        cmd += ["--member-id", member_id, *extra]
        if instance_id:
            cmd += ["--instance-id", instance_id]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        proc = Proc(member_id, popen)

        def read() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                proc.events.append(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                os.kill(p.popen.pid, signal.SIGCONT)
                os.kill(p.popen.pid, signal.SIGKILL)
            p.popen.wait(timeout=10)

    def describe(self) -> GroupDescription:
        return self.admin.describe(GROUP)

    def wait_balanced(self, members: set[str], timeout: float = 15) -> GroupDescription:
        per = PARTS // len(members)

        def ok() -> GroupDescription | None:
            try:
                d = self.describe()
            except UnknownGroupError:  # the first member has not created it yet
                return None
            ids = {m.member_id for m in d.members}
            good = d.state == "stable" and ids == members
            return d if good and all(len(m.owned) == per for m in d.members) else None

        return wait_for(ok, timeout, f"group never balanced over {sorted(members)}")

    def read_logs(self) -> dict[int, list[tuple[str, int]]]:
        out = {}
        for p in range(PARTS):
            # The topic has no metadata here: its partitions have the original tags.
            key = self.conn.keys.stream(TopicLayout(TOPIC, PARTS), p) + ":testreads"
            rows = [r.decode().split() for r in self.conn.client.lrange(key, 0, -1)]
            out[p] = [(m, int(t)) for m, t in rows]
        return out


class Sampler:
    """Samples describe() every ~10 ms on a thread: (monotonic time, {tp: (owner, token)})."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[tuple[float, dict[TopicPartition, tuple[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            d = self.fleet.describe()
            owners = {
                TopicPartition(p.topic, p.partition): (p.owner, p.token) for p in d.partitions
            }
            self.samples.append((time.monotonic(), owners))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fleet(server_url: str, conn: Connection) -> Iterator[Fleet]:
    f = Fleet(server_url, conn)
    try:
        yield f
    finally:
        f.cleanup()


def start_four(
    fleet: Fleet, static: str | None = None, *extra: str
) -> tuple[list[Proc], GroupDescription]:
    procs = [fleet.spawn(f"m{i}", static if i == 0 else None, *extra) for i in range(4)]
    d = fleet.wait_balanced({p.member_id for p in procs})
    return procs, d


def owned_by(d: GroupDescription) -> dict[str, set[TopicPartition]]:
    return {m.member_id: set(m.owned) for m in d.members}


def check_reads(fleet: Fleet) -> None:
    """Per partition, fenced reads happen in non-decreasing token order: no superseded owner
    ever read after a newer grant took the fence."""
    logs = fleet.read_logs()
    assert any(logs.values()), "the member processes never read"
    for p, rows in logs.items():
        tokens = [t for _, t in rows]
        assert tokens == sorted(tokens), f"partition {p}: a stale owner read after a newer one"
        by_token: dict[int, set[str]] = {}
        for m, t in rows:
            by_token.setdefault(t, set()).add(m)
        assert all(len(ms) == 1 for ms in by_token.values())


def test_converge_then_graceful_leave_moves_only_its_partitions(fleet: Fleet) -> None:
    procs, d = start_four(fleet)
    before = {TopicPartition(p.topic, p.partition): (p.owner, p.token) for p in d.partitions}
    leaver = procs[1]
    leaving = owned_by(d)[leaver.member_id]
    left_at = time.monotonic()
    with Sampler(fleet) as sampler:
        leaver.popen.send_signal(signal.SIGTERM)
        assert leaver.popen.wait(timeout=10) == 0
        after = fleet.wait_balanced({p.member_id for p in procs} - {leaver.member_id})
    assert len(sampler.samples) > 10
    for _, owners in sampler.samples:
        for tp, holder in before.items():
            if tp not in leaving:
                assert owners[tp] == holder, f"{tp} moved or was re-granted though it stays"
    moved = {tp for tp, holder in before.items() if after.owners()[tp] != holder[0]}
    assert moved == leaving
    for p in procs:
        if p is not leaver:
            late = [e for e in p.events if e["t"] > left_at]
            assert not any(e["ev"] in ("revoked", "lost") for e in late)
    check_reads(fleet)


def test_kill9_partitions_move_after_the_session_timeout(fleet: Fleet) -> None:
    procs, d = start_four(fleet)
    victim = procs[2]
    theirs = owned_by(d)[victim.member_id]
    os.kill(victim.popen.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.popen.wait(timeout=5)
    time.sleep(0.6)  # well inside the 1 s session: nothing may move yet
    still = fleet.describe()
    assert {tp for tp, m in still.owners().items() if m == victim.member_id} == theirs
    after = fleet.wait_balanced({p.member_id for p in procs} - {victim.member_id})
    took = time.monotonic() - killed
    assert 0.8 < took < 5, f"moved {took:.2f}s after kill -9"
    assert all(len(ps) == 4 for ps in owned_by(after).values())
    check_reads(fleet)


def test_sigstopped_member_is_fenced_rejoins_and_never_double_owns(fleet: Fleet) -> None:
    procs, d = start_four(fleet)
    sleeper = procs[3]
    theirs = owned_by(d)[sleeper.member_id]
    others = {p.member_id for p in procs} - {sleeper.member_id}
    with Sampler(fleet) as sampler:
        os.kill(sleeper.popen.pid, signal.SIGSTOP)
        try:
            d2 = fleet.wait_balanced(others, timeout=10)
            assert not theirs & owned_by(d2).get(sleeper.member_id, set())
            time.sleep(0.3)
        finally:
            os.kill(sleeper.popen.pid, signal.SIGCONT)
        wait_for(lambda: sleeper.has("lost"), 10, "the resumed member never learnt it lost")
        fleet.wait_balanced({p.member_id for p in procs}, timeout=15)
    lost = [e for e in sleeper.events if e["ev"] == "lost"]
    assert {TopicPartition(*tp) for tp in lost[0]["tps"]} == theirs
    for _, owners in sampler.samples:
        assert all(o in {p.member_id for p in procs} for o, _ in owners.values())
    check_reads(fleet)
    # The sleeper's old grants never read again once a newer grant for it existed.
    logs = fleet.read_logs()
    for tp in theirs:
        rows = logs[tp.partition]
        firsts = [i for i, (m, _) in enumerate(rows) if m != sleeper.member_id]
        if firsts:
            old = {t for m, t in rows[: firsts[0]] if m == sleeper.member_id}
            assert not any(t in old for _, t in rows[firsts[0] :])


def test_static_member_restart_keeps_partitions_without_a_rebalance(fleet: Fleet) -> None:
    # A 5 s session: the restarted process must join within it, and starting Python on a
    # busy 2-core machine can take longer than the module's 1 s.
    session = ("--session-ms", "5000", "--heartbeat-ms", "500")
    procs, d = start_four(fleet, "pod-0", *session)
    static = procs[0]
    mine = owned_by(d)[static.member_id]
    epoch = d.epoch
    with Sampler(fleet) as sampler:
        static.popen.send_signal(signal.SIGTERM)
        assert static.popen.wait(timeout=10) == 0
        again = fleet.spawn("m0-restarted", "pod-0", *session)
        members = {p.member_id for p in procs[1:]} | {again.member_id}
        d2 = fleet.wait_balanced(members, timeout=10)
    assert owned_by(d2)[again.member_id] == mine
    assert d2.epoch == epoch, "a static restart within the session bumped the epoch"
    for _, owners in sampler.samples:
        for tp, (owner, _) in owners.items():
            if tp not in mine:
                assert owner == d.owners()[tp]
            else:
                assert owner in (static.member_id, again.member_id)
    check_reads(fleet)
