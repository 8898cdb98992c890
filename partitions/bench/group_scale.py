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
* partitions that changed owner on the extra join, against its fair share (partitions /
  members): a sticky assignor moves about that many and no more.

Rounds compress time: a member heartbeats as soon as its turn comes instead of every
``heartbeat_interval_ms``, so "time until stable" is the server's and the clients' work, not
the schedule's waits (real groups add about one interval per round).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.member import Member
from partitions._base.settings import GroupSettings
from partitions._base.steps import Steps
from partitions._base.types import TopicPartition
from partitions._client.connection import Connection
from partitions.bench.env import (
    bench_server,
    drop_namespace,
    environment,
    new_namespace,
    server_cpu_s,
)


@dataclass(frozen=True, slots=True)
class LiveGroupOptions:
    members: int = 1000
    partitions: int = 10_000
    topics: int = 1
    assignor: str = "uniform"
    max_rounds: int = 50
    url: str | None = None


class _TimedMember(Member):
    """A member that records how long each target computation took (the describe, the
    assignor and the compare-and-set, round trips included)."""

    durations: list[float]

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
    namespace = new_namespace()
    with bench_server(opts.url) as server, server.connect(namespace) as conn:
        try:
            result = _run(conn, opts, say)
            result["env"] = environment(conn, server)
        finally:
            drop_namespace(conn)
    return result


def _run(conn: Connection, opts: LiveGroupOptions, say: Callable[[str], None]) -> dict[str, Any]:
    topics = _topics(opts)
    # The default heartbeat interval (it also sets the members' debounce of target
    # computations), but a long session: the rounds of a large group take longer than a real
    # interval, and an eviction would measure the bench, not the coordinator.
    settings = GroupSettings(
        session_timeout_ms=3_600_000, heartbeat_interval_ms=3_000, assignor=opts.assignor
    )
    durations: list[float] = []  # every member's target computations, shared

    def member(i: int) -> Member:
        m = _TimedMember(
            conn.client, conn.keys, "scale", topics, member_id=f"m{i:05d}", settings=settings
        )
        m.durations = durations
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
    before = _owners(members)
    durations.clear()
    newcomer = member(opts.members)
    newcomer.join()
    members.append(newcomer)
    second = _rounds(conn, members, opts, say, "after one more join")
    after = _owners(members)
    moved = sum(1 for tp, owner in after.items() if before.get(tp) != owner)
    share = opts.partitions / len(members)
    say(f"the extra join moved {moved} partitions (its fair share: {share:.1f})")
    say(
        f"target computations: during the joins {_duration_text(joins_computed)}; "
        f"settling {_duration_text(settle_computed)}; after the extra join "
        f"{_duration_text(durations)}"
    )
    return {
        "mode": "coordinator-live",
        "config": {**asdict(opts), "url": "embedded" if opts.url is None else "given"},
        "join_seconds": round(join_s, 3),
        "server_us_per_join": round(join_cpu_us, 1),
        "after_joins": first,
        "after_extra_join": second,
        "moved_on_extra_join": moved,
        "fair_share": round(share, 2),
        "target_computation_seconds": {
            "joins": _duration_stats(joins_computed),
            "settling": _duration_stats(settle_computed),
            "extra_join": _duration_stats(durations),
        },
    }


def _rounds(
    conn: Connection,
    members: list[Member],
    opts: LiveGroupOptions,
    say: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    cpu0, t0 = server_cpu_s(conn), time.monotonic()
    heartbeats = 0
    rounds = 0
    stable = False
    while rounds < opts.max_rounds and not stable:
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
        return {"count": 0}
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
