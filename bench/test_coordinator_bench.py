"""Coordinator script cost: a group of 200 members over 1,024 partitions.

Measures the heartbeat, join/leave, describe, target CAS and a mass eviction, each one
server-side script, and checks the slowest stays far below the server's busy-script
threshold (5 s). Run: ``.venv/bin/pytest bench/test_coordinator_bench.py -s``
(server: ``PARTSTREAM_TEST_URL``, else the embedded default).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coordinator.member import Member
from partitions._admin.groups import GroupAdmin
from partitions._base.settings import GroupSettings
from partitions._base.types import HeartbeatResult, TopicPartition
from partitions._client.connection import Connection, connect

MEMBERS = 200
PARTITIONS = 1024
BUSY_SCRIPT_MS = 5000
SETTINGS = GroupSettings(session_timeout_ms=600_000, heartbeat_interval_ms=3_000)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def conn(server_url: str) -> Iterator[Connection]:
    c = connect(url=server_url, namespace="b" + uuid.uuid4().hex[:12])
    try:
        yield c
    finally:
        cursor = 0
        while True:
            cursor, keys = c.client.scan(cursor, match=f"{c.keys.ns}:*", count=1000)
            if keys:
                c.client.delete(*keys)
            if cursor == 0:
                break
        c.close()


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, ms: list[float]) -> float:
    ms = sorted(ms)
    p50, worst = ms[len(ms) // 2], ms[-1]
    print(f"  {name:<44} n={len(ms):<4} p50={p50:7.2f} ms  max={worst:7.2f} ms")
    return worst


def settle(members: list[Member]) -> dict[str, HeartbeatResult]:
    release: dict[str, frozenset[TopicPartition]] = {}
    last: dict[str, HeartbeatResult] = {}
    for _ in range(20):
        for m in members:
            r = m.heartbeat(release.get(m.member_id, frozenset()))
            release[m.member_id], last[m.member_id] = r.to_revoke, r
        if not any(r.reconciling for r in last.values()):
            return last
    raise AssertionError("group did not settle")


def test_coordinator_scripts_at_200_members_1024_partitions(conn: Connection) -> None:
    topics = {"bench": PARTITIONS}
    members = [
        Member(conn.client, conn.keys, "big", topics, member_id=f"m{i:03d}", settings=SETTINGS)
        for i in range(MEMBERS)
    ]
    worst: dict[str, float] = {}
    t0 = time.perf_counter()
    join_ms = []
    for m in members:  # each join bumps the epoch and recomputes the target (CAS)
        t = time.perf_counter()
        m.join()
        join_ms.append((time.perf_counter() - t) * 1000)
    settled = settle(members)
    setup = time.perf_counter() - t0
    counts = sorted(len(r.owned) for r in settled.values())
    assert counts[0] >= PARTITIONS // MEMBERS and counts[-1] <= PARTITIONS // MEMBERS + 1
    print(f"\ncoordinator: {MEMBERS} members x {PARTITIONS} partitions (setup {setup:.1f} s)")
    worst["join + describe + assign + heartbeat"] = report(
        "Member.join (script + target CAS + hb)", join_ms
    )

    one = members[MEMBERS // 2]
    worst["heartbeat"] = report("heartbeat, stable group (member.lua)", timed(one.heartbeat, 300))

    keys = conn.keys.group_keys("big")
    raw_join = [
        "join", "extra", "", "bench", f"bench={PARTITIONS}", *SETTINGS.to_fields()
    ]  # fmt: skip

    def join_leave() -> None:
        conn.functions.call("member", keys, raw_join)
        conn.functions.call("member", keys, ["leave", "extra", 0, "0"])

    worst["join+leave"] = report("join + leave scripts (2 calls)", timed(join_leave, 100))
    admin = GroupAdmin(conn)
    worst["describe"] = report(
        "describe (whole group, admin.lua)", timed(lambda: admin.describe("big"), 50)
    )
    worst["describe script"] = report(
        "describe script alone (no parsing)",
        timed(lambda: conn.functions.call("admin", keys, ["describe"]), 50),
    )
    d = admin.describe("big")
    epoch = d.epoch
    cas_args: list[Any] = ["assign", epoch]
    for m in d.members:
        cas_args += [m.member_id, " ".join(tp.wire() for tp in m.target)]

    def cas_only() -> None:
        conn.client.hset(conn.keys.group_state("big"), "target_epoch", 0)
        assert conn.functions.call("admin", keys, cas_args) == [b"OK"]

    worst["assign script"] = report("assign (CAS) script alone", timed(cas_only, 20))

    def recompute() -> None:
        conn.client.hset(conn.keys.group_state("big"), "target_epoch", 0)
        assert one.compute_target(epoch)

    worst["assign"] = report("describe + uniform assignor + CAS assign", timed(recompute, 20))

    # Every other member goes silent at once: one heartbeat evicts 199 members and frees
    # ~1,019 partitions in a single script.
    conn.client.zadd(conn.keys.group_hb("big"), {m.member_id: 0 for m in members if m is not one})
    t = time.perf_counter()
    one.heartbeat()
    worst["mass eviction"] = report(
        "heartbeat evicting 199 members", [1000 * (time.perf_counter() - t)]
    )
    assert len(admin.describe("big").members) == 1

    scripts_only = ("heartbeat", "join+leave", "describe script", "assign script", "mass eviction")
    print(f"  slowest script call (round trip): {max(worst[k] for k in scripts_only):.1f} ms")
    slowest = max(worst.values())
    print(f"  slowest call incl. client work (assignor, parsing): {slowest:.1f} ms")
    assert slowest < BUSY_SCRIPT_MS / 10, f"a coordinator call took {slowest:.0f} ms"
