"""The coordinator's scripts against a real server: membership, eviction, fencing, static
membership, compare-and-set assignment, describe, admin."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from coordinator.member import Member
from coordinator.runner import MemberRunner
from partitions._admin.groups import GroupAdmin
from partitions._base.errors import (
    ConfigError,
    ConflictError,
    DuplicateInstanceError,
    FencedError,
    GroupExistsError,
    UnknownGroupError,
    UnknownMemberError,
)
from partitions._base.fence import claim_fence, fence_value, read_fence, release_fence
from partitions._base.keys import TopicLayout
from partitions._base.settings import GroupSettings
from partitions._base.types import Grant, HeartbeatResult, TopicPartition
from partitions._client.connection import Connection
from tests.helpers import FAST

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOPICS = {"orders": 12}


def member(conn: Connection, mid: str, **kw: object) -> Member:
    kw.setdefault("settings", FAST)
    return Member(conn.client, conn.keys, "g", TOPICS, member_id=mid, **kw)  # type: ignore[arg-type]


def settle(members: list[Member], rounds: int = 10) -> dict[str, HeartbeatResult]:
    """Heartbeat everyone, releasing what is revoked at once, until nothing is reconciling."""
    last: dict[str, HeartbeatResult] = {}
    release: dict[str, frozenset[TopicPartition]] = {m.member_id: frozenset() for m in members}
    for _ in range(rounds):
        for m in members:
            r = m.heartbeat(release[m.member_id])
            release[m.member_id] = r.to_revoke
            last[m.member_id] = r
        if not any(r.reconciling for r in last.values()):
            return last
        # Reconciling members heartbeat every fifth of an interval; a stale target waits for
        # a tenth of one without epoch changes (members debounce target computations).
        time.sleep(members[0].settings.heartbeat_interval_ms / 10 / 1000)
    raise AssertionError(f"did not settle: {last}")


def serving(conn: Connection) -> object:
    """Who served group g's last call (member.lua's state.server)."""
    return conn.client.hget(conn.keys.group_state("g"), "server")


def wait_out_a_restart(conn: Connection, server: object, beat: Callable[[], object]) -> None:
    """If group g's sessions restarted since ``server`` was read (a failover meanwhile: the
    suite's failover pass), ``beat`` for another session timeout and a half: a silent member
    expires a session after the restart, not after its last heartbeat. Else nothing: the
    test's own timing holds."""
    if serving(conn) == server:
        return
    end = time.monotonic() + FAST.session_timeout_ms * 1.5 / 1000
    while time.monotonic() < end:
        beat()
        time.sleep(0.1)


def assert_exclusive(results: dict[str, HeartbeatResult]) -> None:
    seen: dict[TopicPartition, str] = {}
    for mid, r in results.items():
        for tp in r.owned:
            assert tp not in seen, f"{tp} owned by {seen[tp]} and {mid}"
            seen[tp] = mid


def test_join_heartbeat_leave(conn: Connection) -> None:
    a = member(conn, "a", client_info="host1")
    r = a.join()
    assert r.member_epoch == r.group_epoch == r.target_epoch == 1
    assert set(r.owned) == {TopicPartition("orders", p) for p in range(12)}
    tokens = [g.token for _, g in sorted(r.owned.items())]
    assert len(set(tokens)) == 12 and all(g.epoch == 1 for g in r.owned.values())
    assert r.settings == FAST and r.heartbeat_interval_ms == 200
    assert a.heartbeat().owned == r.owned  # a heartbeat changes nothing when stable
    admin = GroupAdmin(conn)
    d = admin.describe("g")
    assert d.state == "stable" and d.epoch == 1 and d.assignor == "uniform"
    (m,) = d.members
    assert (m.member_id, m.client, len(m.owned), m.seconds_since_heartbeat < 1) == (
        "a",
        "host1",
        12,
        True,
    )
    assert admin.list() == ["g"]
    a.leave()
    d = admin.describe("g")
    assert d.state == "empty" and d.epoch == 2 and d.partitions == ()
    with pytest.raises(UnknownMemberError):
        a.heartbeat()


def test_cooperative_rebalance_revokes_before_granting(conn: Connection) -> None:
    a, b = member(conn, "a"), member(conn, "b")
    a.join()
    rb = b.join()
    # b's join made the target stale, but the group changed a moment ago: b waits for the
    # members' debounce (a tenth of the heartbeat interval) before it computes the target.
    assert rb.target_stale and rb.owned == {} and rb.pending == frozenset()
    time.sleep(FAST.heartbeat_interval_ms / 10 / 1000 + 0.01)
    rb = b.heartbeat()
    assert rb.owned == {} and len(rb.pending) == 6  # all six still owned by a
    ra = a.heartbeat()
    assert ra.to_revoke == rb.pending and len(ra.owned) == 12
    kept = {tp: g for tp, g in ra.owned.items() if tp not in ra.to_revoke}
    assert b.heartbeat().owned == {}, "granted before the owner released"
    ra2 = a.heartbeat(released=ra.to_revoke)
    assert ra2.owned == kept, "partitions that stay were re-granted or dropped"
    rb2 = b.heartbeat()
    assert set(rb2.owned) == ra.to_revoke and rb2.pending == frozenset()
    assert min(g.token for g in rb2.owned.values()) > max(g.token for g in kept.values())
    assert GroupAdmin(conn).describe("g").state == "stable"


def test_four_members_balance_and_leave_moves_only_the_leavers(conn: Connection) -> None:
    ms = [member(conn, f"m{i}") for i in range(4)]
    for m in ms:
        m.join()
    res = settle(ms)
    assert_exclusive(res)
    assert sorted(len(r.owned) for r in res.values()) == [3, 3, 3, 3]
    before = {mid: set(r.owned) for mid, r in res.items()}
    ms[0].leave()
    res = settle(ms[1:])
    assert_exclusive(res)
    for mid, r in res.items():
        assert before[mid] <= set(r.owned)
        assert all(r.owned[tp] == res[mid].owned[tp] for tp in before[mid])
    assert sorted(len(r.owned) for r in res.values()) == [4, 4, 4]


def test_silent_member_is_evicted_after_the_session_timeout(conn: Connection) -> None:
    a, b = member(conn, "a"), member(conn, "b")
    a.join()
    b.join()
    settle([a, b])
    epoch = GroupAdmin(conn).describe("g").epoch
    server = serving(conn)
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # a heartbeats, b is silent but not yet expired
        assert len(a.heartbeat().owned) == 6
        time.sleep(0.1)
    wait_out_a_restart(conn, server, a.heartbeat)
    time.sleep(0.35)
    r = settle([a])
    assert len(r["a"].owned) == 12 and r["a"].group_epoch == epoch + 1
    with pytest.raises(UnknownMemberError, match="session expired"):
        b.heartbeat()
    assert not b.joined
    b.join()
    assert sorted(len(x.owned) for x in settle([a, b]).values()) == [6, 6]


def test_sessions_restart_when_another_server_process_takes_the_group_over(
    conn: Connection,
) -> None:
    """A promoted replica (or a restarted server) holds heartbeats written on another clock,
    and the members could not reach it while it took over: member.lua gives every member a
    fresh session there instead of evicting it for the failover's seconds."""
    a, b = member(conn, "a"), member(conn, "b")
    a.join()
    b.join()
    settle([a, b])
    k, state = conn.keys, conn.keys.group_state("g")
    assert serving(conn)  # the serving process, recorded by the last op
    sec, usec = conn.client.time()
    long_ago = sec * 1000 + usec // 1000 - 5000  # five sessions ago
    # As a replica's copy looks after a failover: served by another process, old heartbeats.
    conn.client.hset(state, "server", "another-process:7")
    conn.client.zadd(k.group_hb("g"), {"a": long_ago, "b": long_ago})
    r = a.heartbeat()  # not evicted: its session restarted on this server
    here = serving(conn)
    assert len(r.owned) == 6 and here not in (None, b"another-process:7")
    deadline = time.monotonic() + 1.2  # b stays silent past a session on this server
    while time.monotonic() < deadline:
        a.heartbeat()
        time.sleep(0.1)
    wait_out_a_restart(conn, here, a.heartbeat)
    assert len(settle([a])["a"].owned) == 12  # b evicted now
    with pytest.raises(UnknownMemberError):
        b.heartbeat()
    # Same process: an old heartbeat is a silent member, evicted as always.
    conn.client.zadd(k.group_hb("g"), {"a": long_ago})
    with pytest.raises(UnknownMemberError):
        a.heartbeat()


def test_stale_epoch_is_fenced(conn: Connection) -> None:
    a = member(conn, "a")
    a.join()
    first = a.member_epoch
    for mid in ("b", "c"):
        member(conn, mid).join()
        settle([a])
    assert a.member_epoch is not None and a.member_epoch >= (first or 0) + 2
    a._epoch = first  # what a member that missed two rebalances would send
    with pytest.raises(FencedError, match="drop all partitions and rejoin"):
        a.heartbeat()
    assert not a.joined


def test_previous_epoch_is_accepted_after_a_lost_reply(conn: Connection) -> None:
    a = member(conn, "a")
    a.join()
    before = a.member_epoch
    member(conn, "b").join()
    r = settle([a])["a"]
    assert r.member_epoch == (before or 0) + 1
    a._epoch = before  # the reply that carried the new epoch was lost
    assert a.heartbeat().owned == r.owned


def test_duplicate_instance_refused_and_static_rejoin_keeps_partitions(conn: Connection) -> None:
    s1 = member(conn, "s1", instance_id="pod-0")
    other = member(conn, "x")
    s1.join()
    other.join()
    owned = set(settle([s1, other])["s1"].owned)
    old_tokens = s1.last.owned if s1.last else {}
    with pytest.raises(DuplicateInstanceError, match=r"pod-0.*held by live member s1"):
        member(conn, "s2", instance_id="pod-0").join()
    admin = GroupAdmin(conn)
    epoch = admin.describe("g").epoch
    s1.leave(temporary=True)
    assert admin.describe("g").epoch == epoch  # reserved, no rebalance
    assert settle([other])["x"].owned.keys().isdisjoint(owned)
    r = member(conn, "s2", instance_id="pod-0").join()
    assert set(r.owned) == owned and r.group_epoch == epoch and not r.reconciling
    assert all(r.owned[tp].token > old_tokens[tp].token for tp in owned)
    d = admin.describe("g")
    assert d.epoch == epoch and {m.member_id for m in d.members} == {"s2", "x"}


def test_static_member_not_back_in_time_is_evicted(conn: Connection) -> None:
    s1 = member(conn, "s1", instance_id="pod-0")
    x = member(conn, "x")
    s1.join()
    x.join()
    settle([s1, x])
    server = serving(conn)
    s1.leave(temporary=True)
    end = time.monotonic() + 1.4
    while time.monotonic() < end:
        x.heartbeat()
        time.sleep(0.15)
    wait_out_a_restart(conn, server, x.heartbeat)
    assert len(settle([x])["x"].owned) == 12
    r = member(conn, "s2", instance_id="pod-0").join()  # a fresh member now
    assert r.owned == {} and r.member_epoch == r.group_epoch


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "uniform"])
def test_static_restart_under_a_new_member_id_keeps_the_share(
    conn: Connection, assignor: str
) -> None:
    """A static member restarts under a member id that sorts on the other side of its peer;
    at the next rebalance (a member joins another topic) every assignor gives both static
    members what they had, because members are ordered by instance id."""
    s = GroupSettings(assignor=assignor, session_timeout_ms=3000, heartbeat_interval_ms=300)
    pod0 = member(conn, "b", instance_id="pod-0", settings=s)
    pod1 = member(conn, "c", instance_id="pod-1", settings=s)
    pod0.join()
    pod1.join()
    first = settle([pod0, pod1])
    shares = {"pod-0": set(first["b"].owned), "pod-1": set(first["c"].owned)}
    pod0.leave(temporary=True)
    again = member(conn, "d", instance_id="pod-0", settings=s)
    assert set(again.join().owned) == shares["pod-0"]
    other = Member(conn.client, conn.keys, "g", {"audit": 2}, member_id="a", settings=s)
    epoch = GroupAdmin(conn).describe("g").epoch
    other.join()
    last = settle([again, pod1, other])
    assert last["d"].group_epoch > epoch
    assert set(last["d"].owned) == shares["pod-0"]
    assert set(last["c"].owned) == shares["pod-1"]
    assert {tp.topic for tp in last["a"].owned} == {"audit"}


def test_target_is_compare_and_set_on_the_group_epoch(conn: Connection) -> None:
    a, b = member(conn, "a"), member(conn, "b")
    a.join()
    # Join b with the raw script so nobody computes the target yet.
    conn.functions.call(
        "member", conn.keys.group_keys("g"), ["join", "b", "", "", "orders=12", *FAST.to_fields()]
    )
    b._epoch = GroupAdmin(conn).describe("g").epoch
    d = GroupAdmin(conn).describe("g")
    assert d.target_epoch < d.epoch and d.state == "reconciling"
    stale = conn.functions.call("admin", conn.keys.group_keys("g"), ["assign", d.epoch - 1])
    assert stale[0] == b"STALE"
    assert a.compute_target(d.epoch) is True
    again = conn.functions.call("admin", conn.keys.group_keys("g"), ["assign", d.epoch, "a", ""])
    assert again == [b"DONE"]
    dup = conn.functions.call(
        "admin", conn.keys.group_keys("g"), ["assign", d.epoch, "a", "orders:1", "b", "orders:1"]
    )
    assert dup[0] == b"DONE"  # already done wins over validation; now check validation:
    conn.client.hset(conn.keys.group_state("g"), "target_epoch", 0)
    dup = conn.functions.call(
        "admin", conn.keys.group_keys("g"), ["assign", d.epoch, "a", "orders:1", "b", "orders:1"]
    )
    assert dup[:2] == [b"ERR", b"INVALID"]


def test_fence_claim_and_release(conn: Connection) -> None:
    c, k = conn.client, conn.keys
    orders = TopicLayout("orders", 12)  # no metadata here: the original tags
    assert fence_value("m1", 17) == "m1 17"
    assert claim_fence(c, k, "g", orders, 3, "m1", 17)
    assert c.hget(k.fence(orders, 3), "g") == b"m1 17"
    assert claim_fence(c, k, "g", orders, 3, "m1", 17)  # idempotent
    assert not claim_fence(c, k, "g", orders, 3, "m0", 16)  # an older grant loses
    assert claim_fence(c, k, "g", orders, 3, "m2", 18)
    assert not release_fence(c, k, "g", orders, 3, "m1", 17)  # no longer ours
    assert read_fence(c, k, "g", orders, 3) == ("m2", 18)
    assert claim_fence(c, k, "other-group", orders, 3, "z", 1)  # groups are independent
    assert release_fence(c, k, "g", orders, 3, "m2", 18)
    assert read_fence(c, k, "g", orders, 3) is None
    big = 1_795_000_000_000_123  # tokens are ms * 1000 scale
    assert claim_fence(c, k, "g", orders, 3, "m3", big)
    assert not claim_fence(c, k, "g", orders, 3, "m4", big - 1)
    assert claim_fence(c, k, "g", orders, 3, "m4", big + 1)


def test_tokens_of_a_recreated_group_beat_old_fences(conn: Connection) -> None:
    a = member(conn, "a")
    tp, grant = sorted(a.join().owned.items())[0]
    assert claim_fence(
        conn.client, conn.keys, "g", a.layouts.of(tp.topic), tp.partition, "a", grant.token
    )
    a.leave()
    assert GroupAdmin(conn).delete("g")
    time.sleep(0.01)
    r = member(conn, "b").join()
    assert r.created_group
    assert claim_fence(
        conn.client, conn.keys, "g", a.layouts.of(tp.topic), tp.partition, "b", r.owned[tp].token
    )


def test_admin_create_alter_describe_delete(conn: Connection) -> None:
    admin = GroupAdmin(conn)
    with pytest.raises(UnknownGroupError):
        admin.describe("g")
    with pytest.raises(UnknownGroupError):
        admin.get_settings("g")
    declared = GroupSettings(assignor="range", session_timeout_ms=2000, heartbeat_interval_ms=300)
    assert admin.create("g", declared)
    assert not admin.create("g", exist_ok=True)
    with pytest.raises(GroupExistsError, match="already exists") as exists:
        admin.create("g")
    assert isinstance(exists.value, ConflictError) and not exists.value.retriable
    r = member(conn, "a").join()  # brings FAST settings; the declared ones win
    assert r.settings == declared
    epoch = admin.describe("g").epoch
    admin.alter("g", max_deliveries=9)
    assert admin.describe("g").epoch == epoch
    assert admin.alter("g", assignor="uniform").assignor == "uniform"
    assert admin.describe("g").epoch == epoch + 1  # a new assignor recomputes the target
    with pytest.raises(ConfigError):
        admin.alter("g", heartbeat_interval_ms=5000)
    d = json.loads(json.dumps(admin.describe("g").to_dict()))
    assert {"group", "state", "epoch", "members", "partitions"} <= set(d)
    assert d["members"][0]["member_id"] == "a" and "partitions" in d["members"][0]
    assert {"topic", "partition", "owner"} <= set(d["partitions"][0])
    with pytest.raises(ConflictError, match="live members") as busy:
        admin.delete("g")
    assert busy.value.retriable  # once the members are gone, the same call succeeds
    assert admin.delete("g", force=True)
    assert admin.list() == [] and not admin.delete("g")
    assert conn.client.keys(f"{conn.keys.ns}:g:*") == []


def test_scripts_reload_after_script_flush(conn: Connection) -> None:
    a = member(conn, "a")
    a.join()
    conn.client.script_flush()
    assert len(a.heartbeat().owned) == 12
    assert claim_fence(conn.client, conn.keys, "g", a.layouts.of("orders"), 0, "a", 10**15)


def test_runner_reports_revocations_before_assignments(conn: Connection) -> None:
    events: list[tuple[str, str, frozenset[TopicPartition]]] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            events.append((self.name, "revoked", frozenset(revoked)))

        def on_partitions_assigned(self, assigned: dict[TopicPartition, Grant]) -> None:
            events.append((self.name, "assigned", frozenset(assigned)))

        def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
            events.append((self.name, "lost", frozenset(lost)))

    ra = MemberRunner(member(conn, "a"), Listener("a")).start()
    rb = MemberRunner(member(conn, "b"), Listener("b")).start()
    try:
        deadline = time.monotonic() + 10
        while not (len(ra.owned()) == len(rb.owned()) == 6) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ra.owned()) == len(rb.owned()) == 6
        assert set(ra.owned()).isdisjoint(rb.owned())
        assert ra.session_alive() and rb.session_alive()
        revoked_at = events.index(("a", "revoked", frozenset(rb.owned())))
        assigned_at = events.index(("b", "assigned", frozenset(rb.owned())))
        assert revoked_at < assigned_at
        assert not any(kind == "lost" for _, kind, _ in events)
    finally:
        rb.close()
        deadline = time.monotonic() + 10
        while len(ra.owned()) != 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ra.owned()) == 12
        ra.close()
    assert GroupAdmin(conn).describe("g").state == "empty"
