"""The coordinator on a real server at scale: many members joining one group.

``partstream bench coordinator --live`` runs ``members`` :class:`~coordinator.member.Member`
objects (lightweight: no threads, one shared connection, no data-plane reads) against the
server: they join one group over ``partitions`` partitions one after another, then heartbeat
in rounds -- each member in turn, handing back at once whatever its last reply asked it to
revoke -- until the group is stable (no member reconciling, every partition owned exactly
once). Then one more member joins the stable group and the rounds go on until it is stable
again. The figures:

* time and heartbeat rounds until stable, after the joins and after the extra join;
* the server's CPU per heartbeat (``INFO cpu`` over the rounds, join calls excluded) and per
  join call, as the server's own counters measure them;
* the assignor's time per rebalance: every target computation a member made (describe, the
  assignor, the compare-and-set, round trips included), median and max, and how many there
  were, during the joins, while settling, and after the extra join (members debounce
  computations: a burst of joins should cost about one);
* the server's CPU per heartbeat of the stable group (one more round once stable: what the
  group costs the server while nothing changes, every member every interval);
* the assignor alone (the pure function inside each target computation, no round trips):
  its time per rebalance;
* partitions that changed owner on the extra join, against its share (partitions / members,
  rounded up): the target is to move no more than that (a sticky assignor moves exactly
  the newcomer's partitions).

``repeat`` rounds, each a new group in a namespace of its own on the same server; the
figures printed last are the rounds' medians, and the target must hold in every round.

Rounds compress time: a member heartbeats as soon as its turn comes instead of every
``heartbeat_interval_ms``, so "time until stable" is the server's and the clients' work, not
the schedule's waits (real groups add about one interval per round).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.member import Member
from partitions._base.settings import GroupSettings
from partitions._base.steps import Steps
from partitions._base.types import GroupDescription, TopicPartition
from partitions._client.connection import Connection
from partitions.bench.env import (
    bench_server,
    drop_namespace,
    environment,
    new_namespace,
    server_cpu_s,
)

# The members' heartbeat interval and, a tenth of it, how long they wait after the last
# epoch change before computing a stale target (coordinator.member.target_due).
HEARTBEAT_INTERVAL_MS = 3_000
DEBOUNCE_S = HEARTBEAT_INTERVAL_MS / 10_000


@dataclass(frozen=True, slots=True)
class LiveGroupOptions:
    members: int = 1000
    partitions: int = 10_000
    topics: int = 1
    assignor: str = "uniform"
    # Heartbeat rounds at most, once 3 x DEBOUNCE_S has passed (a small group's rounds are
    # quicker than the members' debounce of target computations).
    max_rounds: int = 50
    repeat: int = 1
    url: str | None = None


class _TimedMember(Member):
    """A member that records how long each target computation took (the describe, the
    assignor and the compare-and-set, round trips included)."""

    durations: list[float]
    assigning: list[float]

    def assign_target(self, desc: GroupDescription) -> dict[str, set[TopicPartition]]:
        t0 = time.perf_counter()
        try:
            return super().assign_target(desc)
        finally:
            self.assigning.append(time.perf_counter() - t0)

    def target_steps(self, epoch: int) -> Steps[bool]:
        t0 = time.perf_counter()
        try:
            return (yield from super().target_steps(epoch))
        finally:
            self.durations.append(time.perf_counter() - t0)


def _topics(opts: LiveGroupOptions) -> dict[str, int]:
    base, extra = divmod(opts.partitions, opts.topics)
    return {f"t{i:03d}": base + (1 if i < extra else 0) for i in range(opts.topics)}


def run_live_group_bench(opts: LiveGroupOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the benchmark (see the module); ``say`` gets the text lines. Returns the result."""
    rounds: list[dict[str, Any]] = []
    with bench_server(opts.url) as server:
        for r in range(opts.repeat):
            if opts.repeat > 1:
                say(f"-- round {r + 1} of {opts.repeat}")
            with server.connect(new_namespace()) as conn:
                try:
                    rounds.append(_run(conn, opts, say))
                    env = environment(conn, server)
                finally:
                    drop_namespace(conn)
    result = _summary(opts, rounds, say)
    result["env"] = env
    return result


def _summary(
    opts: LiveGroupOptions, rounds: list[dict[str, Any]], say: Callable[[str], None]
) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return float(statistics.median(get(r) for r in rounds))

    share = math.ceil(opts.partitions / (opts.members + 1))
    most_moved = max(r["moved_on_extra_join"] for r in rounds)
    stable = all(r["after_joins"]["stable"] and r["after_extra_join"]["stable"] for r in rounds)
    met = stable and most_moved <= share
    summary = {
        "seconds_until_stable": med(lambda r: r["seconds_until_stable"]),
        "seconds_until_stable_after_extra_join": med(lambda r: r["after_extra_join"]["seconds"]),
        "server_us_per_join": med(lambda r: r["server_us_per_join"]),
        "server_us_per_heartbeat_reconciling": med(
            lambda r: r["after_joins"]["server_us_per_heartbeat"]
        ),
        "server_us_per_heartbeat_stable": med(
            lambda r: r["stable_group"]["server_us_per_heartbeat"]
        ),
        "assignor_ms_per_rebalance": med(lambda r: r["assignor_seconds"]["median"] * 1000),
        "target_computation_ms": med(
            lambda r: r["target_computation_seconds"]["all"]["median"] * 1000
        ),
    }
    label = f"median of {len(rounds)}: " if len(rounds) > 1 else ""
    say(
        f"{label}stable {summary['seconds_until_stable']:.2f} s after the joins "
        f"({summary['seconds_until_stable_after_extra_join']:.2f} s after the extra join); "
        f"server {summary['server_us_per_join']:,.0f} us per join, "
        f"{summary['server_us_per_heartbeat_reconciling']:,.0f} us per heartbeat reconciling, "
        f"{summary['server_us_per_heartbeat_stable']:,.0f} us stable; assignor "
        f"{summary['assignor_ms_per_rebalance']:.1f} ms per rebalance (target computation "
        f"{summary['target_computation_ms']:.1f} ms with its round trips)"
    )
    moved = "/".join(str(r["moved_on_extra_join"]) for r in rounds)
    say(
        f"target extra join moves only its share: moved {moved} <= {share} "
        f"({'met' if met else '**missed**'}{'' if stable else ': a group did NOT become stable'})"
    )
    return {
        "mode": "coordinator-live",
        "config": {**asdict(opts), "url": "embedded" if opts.url is None else "given"},
        "summary": {k: round(v, 3) for k, v in summary.items()},
        "target": {
            "name": "partitions moved by the extra join",
            "value": most_moved,
            "goal": share,
            "met": met,
        },
        "rounds": rounds,
    }


def _run(conn: Connection, opts: LiveGroupOptions, say: Callable[[str], None]) -> dict[str, Any]:
    topics = _topics(opts)
    # The default heartbeat interval (it also sets the members' debounce of target
    # computations), but a long session: the rounds of a large group take longer than a real
    # interval, and an eviction would measure the bench, not the coordinator.
    settings = GroupSettings(
        session_timeout_ms=3_600_000,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        assignor=opts.assignor,
    )
    durations: list[float] = []  # every member's target computations, shared
    assigning: list[float] = []  # the assignor's part of each

    def member(i: int) -> Member:
        m = _TimedMember(
            conn.client, conn.keys, "scale", topics, member_id=f"m{i:05d}", settings=settings
        )
        m.durations, m.assigning = durations, assigning
        return m

    members = [member(i) for i in range(opts.members)]
    say(
        f"{opts.members:,} members joining one group over {opts.partitions:,} partitions "
        f"({opts.topics} topic(s)), assignor {opts.assignor}"
    )
    cpu0, t0 = server_cpu_s(conn), time.monotonic()
    for m in members:
        m.join()
    join_s = time.monotonic() - t0
    join_cpu_us = (server_cpu_s(conn) - cpu0) * 1e6 / opts.members
    joins_computed = list(durations)
    say(
        f"joins: {join_s:.2f} s for {opts.members:,} (server {join_cpu_us:,.0f} us per join, "
        f"{len(joins_computed)} target computations on the way)"
    )
    first = _rounds(conn, members, opts, say, "after the joins")
    settle_computed = durations[len(joins_computed) :]
    steady = _rounds(conn, members, opts, say, "stable group", once=True)
    before = _owners(members)
    extra_from = len(durations)
    newcomer = member(opts.members)
    newcomer.join()
    members.append(newcomer)
    second = _rounds(conn, members, opts, say, "after one more join")
    after = _owners(members)
    moved = sum(1 for tp, owner in after.items() if before.get(tp) != owner)
    share = opts.partitions / len(members)
    say(f"the extra join moved {moved} partitions (its fair share: {share:.1f})")
    extra_computed = durations[extra_from:]
    say(
        f"target computations: during the joins {_duration_text(joins_computed)}; "
        f"settling {_duration_text(settle_computed)}; after the extra join "
        f"{_duration_text(extra_computed)}"
    )
    say(f"the assignor alone (in those): {_duration_text(assigning)}")
    return {
        "join_seconds": round(join_s, 3),
        "seconds_until_stable": round(join_s + first["seconds"], 3),
        "server_us_per_join": round(join_cpu_us, 1),
        "after_joins": first,
        "stable_group": steady,
        "after_extra_join": second,
        "moved_on_extra_join": moved,
        "fair_share": round(share, 2),
        "target_computation_seconds": {
            "joins": _duration_stats(joins_computed),
            "settling": _duration_stats(settle_computed),
            "extra_join": _duration_stats(extra_computed),
            "all": _duration_stats(durations),
        },
        "assignor_seconds": _duration_stats(assigning),
    }


def _rounds(
    conn: Connection,
    members: list[Member],
    opts: LiveGroupOptions,
    say: Callable[[str], None],
    label: str,
    *,
    once: bool = False,
) -> dict[str, Any]:
    """Heartbeat rounds until the group is stable (``once``: one round, of a stable group)."""
    cpu0, t0 = server_cpu_s(conn), time.monotonic()
    heartbeats = 0
    rounds = 0
    stable = False
    # Members compute a stale target only once the group epoch is a tenth of an interval old:
    # a small group's rounds could all fall inside that wait.
    patience = t0 + 3 * DEBOUNCE_S
    while (
        (rounds < opts.max_rounds or time.monotonic() < patience)
        and not stable
        and not (once and rounds)
    ):
        rounds += 1
        for m in members:
            last = m.last
            release = last.to_revoke if last is not None else frozenset()
            m.heartbeat(release)
            heartbeats += 1
        stable = _stable(members, opts.partitions)
    seconds = time.monotonic() - t0
    us = (server_cpu_s(conn) - cpu0) * 1e6 / max(1, heartbeats)
    say(
        f"{label}: {'stable' if stable else 'NOT stable'} after {rounds} round(s), "
        f"{seconds:.2f} s, {heartbeats:,} heartbeats, server {us:,.0f} us per heartbeat"
    )
    return {
        "stable": stable,
        "rounds": rounds,
        "seconds": round(seconds, 3),
        "heartbeats": heartbeats,
        "server_us_per_heartbeat": round(us, 1),
    }


def _stable(members: list[Member], partitions: int) -> bool:
    owned = 0
    seen: set[TopicPartition] = set()
    for m in members:
        last = m.last
        if last is None or last.reconciling:
            return False
        owned += len(last.owned)
        seen.update(last.owned)
    return owned == partitions == len(seen)


def _owners(members: list[Member]) -> dict[TopicPartition, str]:
    return {tp: m.member_id for m in members if m.last for tp in m.last.owned}


def _duration_stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": 0.0, "max": 0.0, "total": 0.0}
    return {
        "count": len(values),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
        "total": round(sum(values), 3),
    }


def _duration_text(values: list[float]) -> str:
    s = _duration_stats(values)
    if not s["count"]:
        return "none"
    return (
        f"{s['count']}, median {s['median'] * 1000:.1f} ms, max {s['max'] * 1000:.1f} ms, "
        f"total {s['total']:.2f} s"
    )
