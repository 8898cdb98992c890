"""The invariant checker: L, G, O, D of docs/DESIGN.md over the outcomes workers logged.

Pure functions over plain data (the JSON lines of :mod:`tests.faults.worker` plus what the
server holds at the end), so the checker itself is unit-tested on hand-made logs that break
each rule (``test_checker.py``), and a mutated library must turn a real scenario red
(``test_mutation.py``): a checker that cannot fail proves nothing.

Terms. A *send* is acknowledged when its producer future resolved (``sent``/``ok``). A
*processing* is one ``proc`` line; it is *effective* unless its commit was ``refused`` by the
fence (a zombie's late work: the partition had moved on, and the new owner processes the
record again). A processing is *complete* if it is effective and its commit was ``ok`` or
``unknown`` (the run drained, so an unknown commit did land or was redelivered). Entry ids
order the records of a partition: that is the append order. Everything except the producer
side is checked per consumer group: each group must process every record.

* **L** (no loss, per group): every acknowledged send has a complete processing in the
  group, or is in the group's dead-letter stream *and the scenario expected it there*
  (``expected_dead``: the poison records it injected, the trims it made; ``may_dead``: what
  may ride along, e.g. records handed out beside a poison record whose acks died with the
  process). Missing ones are *lost*; every other dead letter is *unexpected*, a failure too.
* **G** (one owner): (a) two members never process under the same grant (partition, token);
  (b) no read under token t starts after a read under a newer token t' > t of the same
  partition returned (a superseded owner received entries); (c) no ack under token t is
  accepted after a newer token read the partition (a zombie's late ack went through).
* **O** (order, strict): per key, a record is processed (completely) for the first time only
  after every earlier record of its key that was handed out was completely processed: a new
  owner finishes the dead owner's unacked entries before any newer one. Records the scenario
  expected in the dead-letter stream and records the server no longer holds (an allowed AOF
  loss, a restart without persistence, a trim) are exempt, and L speaks for records never
  handed out at all. Also: one member's hand-outs of a key under one grant move forward (a
  redelivery that goes back within a grant is a reordering), and a key's acknowledged sends
  follow its send sequence (the producer did not reorder). Keys that moved to another
  partition when the topic grew (``moved_keys``) are promised order only within each
  partition (router.py: order across the change holds only once the old partition drained):
  for them every rule applies per (key, partition).
* **D** (bounded duplicates): a record is processed again only if no earlier processing's
  ack had been accepted before the new read started. Also: no (key, seq) appended twice
  (idempotent production), beyond ``allowed_duplicate_appends``.
* **The run happened**: every worker exited with a code the scenario expected (a worker the
  scenario did not kill exits 0), acknowledged + failed sends == the count the producers
  were asked for, failed sends (``in_doubt``) within ``allowed_in_doubt`` (0 unless the fault
  makes doubt expected), and whatever the scenario itself requires (``Verdict.require``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Id = tuple[int, int]
Rec = tuple[int, str]  # (partition, entry id)

# Failure categories, as Verdict.failures() names them.
CATEGORIES = ("L", "dlq", "G", "O", "D", "dup-appends", "in-doubt", "produced", "exit", "run")


def parse_id(text: str) -> Id:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream: where it came from, for which group, and why."""

    p: int
    id: str
    group: str
    reason: str


@dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended, and the exit codes its scenario expected of it."""

    name: str
    role: str
    code: int | None  # None: still running when checked
    expected: tuple[int, ...] = (0,)


@dataclass
class Verdict:
    """The outcome of one scenario: counts, invariant violations and run checks."""

    scenario: str
    fault: str
    groups: int = 1
    produced: int = 0  # acknowledged sends
    in_doubt: int = 0  # sends whose future failed (may or may not be in the stream)
    expected_count: int | None = None
    processed: int = 0  # distinct records completely processed, summed over groups
    duplicated: int = 0  # extra effective processings (redeliveries)
    lost: int = 0
    dead_lettered: int = 0
    unexpected_dead: int = 0  # dead letters the scenario did not cause
    order_violations: int = 0
    fencing_violations: int = 0
    duplicate_violations: int = 0  # D: re-processing of an already acked record
    duplicate_appends: int = 0  # the same (key, seq) appended twice
    zombie_refused: int = 0  # processings whose commit the fence refused
    allowed_loss: int = 0  # documented bound for this scenario (e.g. AOF everysec)
    allowed_duplicate_violations: int = 0
    allowed_duplicate_appends: int = 0
    allowed_in_doubt: int = 0
    bad_exits: list[str] = field(default_factory=list)
    run_failures: list[str] = field(default_factory=list)  # the scenario's own requirements
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def require(self, cond: object, failure: str) -> bool:
        """A scenario's own condition for a meaningful run; a false one fails the verdict."""
        if not cond:
            self.run_failures.append(failure)
        return bool(cond)

    def failures(self) -> list[tuple[str, str]]:
        """Every reason this verdict fails, as (category, text); [] means OK."""
        out: list[tuple[str, str]] = []
        if self.lost > self.allowed_loss:
            bound = f" (<= {self.allowed_loss} allowed)" if self.allowed_loss else ""
            out.append(("L", f"{self.lost} lost{bound}"))
        if self.unexpected_dead:
            out.append(("dlq", f"{self.unexpected_dead} dead letters nobody caused"))
        if self.fencing_violations:
            out.append(("G", f"{self.fencing_violations} one-owner violations"))
        if self.order_violations:
            out.append(("O", f"{self.order_violations} order violations"))
        if self.duplicate_violations > self.allowed_duplicate_violations:
            out.append(("D", f"{self.duplicate_violations} redelivered after their ack"))
        if self.duplicate_appends > self.allowed_duplicate_appends:
            out.append(("dup-appends", f"{self.duplicate_appends} (key, seq) appended twice"))
        if self.in_doubt > self.allowed_in_doubt:
            out.append(
                ("in-doubt", f"{self.in_doubt} sends failed (<= {self.allowed_in_doubt} allowed)")
            )
        if self.expected_count is not None and self.produced + self.in_doubt != self.expected_count:
            out.append(
                (
                    "produced",
                    f"produced {self.produced} + failed {self.in_doubt} != "
                    f"count {self.expected_count}",
                )
            )
        out += [("exit", text) for text in self.bad_exits]
        out += [("run", text) for text in self.run_failures]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failed_on(self) -> set[str]:
        """The categories (see CATEGORIES) this verdict fails on."""
        return {cat for cat, _ in self.failures()}

    def line(self) -> str:
        flag = "OK  " if self.ok else "FAIL"
        extra = f" notes: {'; '.join(self.notes)}" if self.notes else ""
        bound = f"(<= {self.allowed_loss} allowed)" if self.allowed_loss else ""
        why = f" failed: {'; '.join(t for _, t in self.failures())}" if not self.ok else ""
        groups = f" groups={self.groups}" if self.groups != 1 else ""
        return (
            f"{flag} {self.scenario:<24} {self.fault:<34}{groups} produced={self.produced} "
            f"in_doubt={self.in_doubt} processed={self.processed} duplicated={self.duplicated} "
            f"lost={self.lost}{bound} dlq={self.dead_lettered} "
            f"dlq-unexpected={self.unexpected_dead} order={self.order_violations} "
            f"fencing={self.fencing_violations} redelivered-after-ack={self.duplicate_violations}"
            f" dup-appends={self.duplicate_appends} zombie-refused={self.zombie_refused}"
            f"{why}{extra}"
        )

    def report(self) -> str:
        """The verdict line and the first details: an assertion message."""
        return "\n".join([self.line(), *self.details[:30]])


@dataclass(frozen=True)
class Proc:
    member: str
    p: int
    id: str
    key: str
    seq: int
    token: int
    t0: float
    t1: float
    t: float
    n: int  # position in the concatenated logs: orders the lines of one worker exactly


def _detail(v: Verdict, text: str) -> None:
    if len(v.details) < 60:
        v.details.append(text)


def check(
    scenario: str,
    fault: str,
    producer_events: Iterable[dict[str, Any]],
    consumer_events: Iterable[dict[str, Any]],
    dead_letters: Iterable[DeadLetter] = (),
    *,
    groups: Collection[str] | None = None,
    expected_dead: Mapping[Rec, str] | None = None,
    may_dead: Mapping[Rec, str] | None = None,
    present: Collection[Rec] | None = None,
    moved_keys: Collection[str] = (),
    expected_count: int | None = None,
    workers: Iterable[WorkerExit] = (),
    allowed_loss: int = 0,
    allowed_in_doubt: int = 0,
    allowed_duplicate_violations: int = 0,
    allowed_duplicate_appends: int = 0,
) -> Verdict:
    """Check L, G, O, D and the run (see the module doc).

    ``groups``: the groups that must each process every record (default: those that logged);
    ``expected_dead`` / ``may_dead``: (partition, id) -> the dead-letter reason the scenario
    caused; ``present``: every (partition, id) the server's streams hold at the end (None:
    not collected, nothing counts as vanished); ``moved_keys``: keys that changed partition.
    """
    v = Verdict(
        scenario,
        fault,
        expected_count=expected_count,
        allowed_loss=allowed_loss,
        allowed_in_doubt=allowed_in_doubt,
        allowed_duplicate_violations=allowed_duplicate_violations,
        allowed_duplicate_appends=allowed_duplicate_appends,
    )
    expected_dead = dict(expected_dead or {})
    may_dead = dict(may_dead or {})
    moved = set(moved_keys)

    # -- the run ------------------------------------------------------------------------------
    for w in workers:
        if w.code not in w.expected:
            text = "still running" if w.code is None else f"exited {w.code}"
            v.bad_exits.append(f"{w.role} {w.name} {text} (expected {list(w.expected)})")

    acked: dict[Rec, tuple[str, int]] = {}
    failed: dict[str, int] = defaultdict(int)
    for e in producer_events:
        if e.get("ev") != "sent":
            continue
        if e["ok"]:
            acked[(e["p"], e["id"])] = (e["key"], e["seq"])
        else:
            v.in_doubt += 1
            failed[str(e.get("err"))] += 1
            if failed[str(e.get("err"))] == 1:
                _detail(v, f"in doubt: {e['key']}#{e['seq']} failed: {e.get('msg', e.get('err'))}")
    v.produced = len(acked)
    if failed:
        v.notes.append("failed sends: " + ", ".join(f"{k} x{n}" for k, n in sorted(failed.items())))

    by_group: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for n, e in enumerate(consumer_events):
        if e.get("ev") in ("proc", "ack"):
            by_group[str(e.get("group", ""))].append((n, e))
    letters = list(dead_letters)
    v.dead_lettered = len(letters)
    names = sorted(set(groups) if groups is not None else set(by_group) or {""})
    v.groups = len(names)
    for g in sorted(set(by_group) - set(names)):
        v.run_failures.append(f"consumers logged for group {g!r}, not one of {names}")
    for d in letters:
        if d.group not in names:
            v.unexpected_dead += 1
            _detail(v, f"dlq: {d.p}/{d.id} dead-lettered for unknown group {d.group!r}")

    # -- the producer side: D (appended twice) and O (send order) ---------------------------
    keyseqs: dict[tuple[str, int], set[Rec]] = defaultdict(set)
    for _, e in itertools.chain.from_iterable(by_group.values()):
        if e.get("ev") == "proc":
            keyseqs[(e["key"], e["seq"])].add((e["p"], e["id"]))
    for rec, ks in acked.items():
        keyseqs[ks].add(rec)
    for ks, recs in sorted(keyseqs.items()):
        if len(recs) > 1:
            v.duplicate_appends += len(recs) - 1
            _detail(v, f"D: {ks[0]}#{ks[1]} appended {len(recs)} times: {sorted(recs)}")
    sends: dict[tuple[str, int], list[tuple[Id, int]]] = defaultdict(list)
    for (p, rid), (key, seq) in acked.items():
        sends[_okey(key, p, moved)].append((parse_id(rid), seq))
    for (key, _), pairs in sorted(sends.items()):
        seqs = [seq for _, seq in sorted(pairs)]
        bad = sum(1 for a, b in itertools.pairwise(seqs) if b < a)  # b == a: D's business
        if bad:
            v.order_violations += bad
            _detail(v, f"O: {key} appended out of send order {bad} time(s)")

    vanished: set[Rec] = set()
    if present is not None:
        held = set(present)
        vanished = {rec for rec in acked if rec not in held}
        for _, e in itertools.chain.from_iterable(by_group.values()):
            if e.get("ev") == "proc" and (e["p"], e["id"]) not in held:
                vanished.add((e["p"], e["id"]))
    for g in names:
        mine = [d for d in letters if d.group == g]
        _check_group(v, g, len(names) > 1, acked, by_group.get(g, []), mine,
                     expected_dead, may_dead, vanished, moved)  # fmt: skip
    return v


def _r(rec: Rec) -> str:
    return f"{rec[0]}/{rec[1]}"


def _okey(key: str, p: int, moved: set[str]) -> tuple[str, int]:
    """What order is promised over: the key, or (key, partition) for a key that moved."""
    return (key, p) if key in moved else (key, -1)


def _check_group(
    v: Verdict,
    group: str,
    tag: bool,
    acked: dict[Rec, tuple[str, int]],
    events: list[tuple[int, dict[str, Any]]],
    letters: list[DeadLetter],
    expected_dead: dict[Rec, str],
    may_dead: dict[Rec, str],
    vanished: set[Rec],
    moved: set[str],
) -> None:
    where = f"[{group}] " if tag else ""
    procs: list[Proc] = []
    acks: dict[tuple[str, int, str, int], tuple[str, float]] = {}
    for n, e in events:
        if e.get("ev") == "proc":
            procs.append(
                Proc(
                    e["member"], e["p"], e["id"], e["key"], e["seq"], e["token"],
                    e["t0"], e["t1"], e["t"], n,
                )
            )  # fmt: skip
        elif e.get("ev") == "ack":
            for rid in e["ids"]:
                acks[(e["member"], e["p"], rid, e["token"])] = (e["outcome"], e["t"])

    def outcome(pr: Proc) -> tuple[str | None, float]:
        return acks.get((pr.member, pr.p, pr.id, pr.token), (None, 0.0))

    effective = [pr for pr in procs if outcome(pr)[0] != "refused"]
    complete = [pr for pr in effective if outcome(pr)[0] in ("ok", "unknown")]
    v.zombie_refused += len(procs) - len(effective)

    # -- dead letters: only those the scenario caused ----------------------------------------
    dead: set[Rec] = set()
    for d in letters:
        rec = (d.p, d.id)
        want = expected_dead.get(rec) or may_dead.get(rec)
        if want is None or want != d.reason:
            v.unexpected_dead += 1
            _detail(v, f"dlq: {where}{d.p}/{d.id} dead-lettered ({d.reason}) by no fault of ours")
        else:
            dead.add(rec)

    # -- L ------------------------------------------------------------------------------------
    done = {(pr.p, pr.id) for pr in complete}
    v.processed += len(done)
    for rec, (key, seq) in sorted(acked.items()):
        if rec not in done and rec not in dead:
            v.lost += 1
            _detail(v, f"L: {where}{key}#{seq} at {rec[0]}/{rec[1]} never processed+acked")

    # -- D ------------------------------------------------------------------------------------
    by_rec: dict[Rec, list[Proc]] = defaultdict(list)
    for pr in sorted(effective, key=lambda x: (x.t0, x.n)):
        by_rec[(pr.p, pr.id)].append(pr)
    for rec, prs in by_rec.items():
        v.duplicated += len(prs) - 1
        for later in prs[1:]:
            for earlier in prs:
                if earlier is later:
                    break
                out, t_ack = outcome(earlier)
                if out == "ok" and t_ack < later.t0:
                    v.duplicate_violations += 1
                    _detail(v, f"D: {where}{rec} processed again after its ack was accepted")
                    break

    # -- G ------------------------------------------------------------------------------------
    holders: dict[tuple[int, int], set[str]] = defaultdict(set)
    for pr in procs:
        holders[(pr.p, pr.token)].add(pr.member)
    for (p, token), members in sorted(holders.items()):
        if len(members) > 1:
            v.fencing_violations += 1
            _detail(v, f"G: {where}{p} token {token} used by {sorted(members)}")
    first_read: dict[tuple[int, int], float] = {}  # (p, token) -> earliest poll return
    for pr in procs:
        k = (pr.p, pr.token)
        first_read[k] = min(first_read.get(k, pr.t1), pr.t1)
    newest_before: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for (p, token), t1 in first_read.items():
        newest_before[p].append((t1, token))

    def newer_read_before(p: int, token: int, when: float) -> bool:
        return any(t1 < when and tok > token for t1, tok in newest_before[p])

    stale_reads = {
        (pr.p, pr.token, pr.t0) for pr in procs if newer_read_before(pr.p, pr.token, pr.t0)
    }
    for p, token, _ in sorted(stale_reads):
        v.fencing_violations += 1
        _detail(v, f"G: {where}{p} read under token {token} after a newer owner read it")
    for (member, p, rid, token), (out, t) in sorted(acks.items()):
        if out == "ok" and newer_read_before(p, token, t):
            v.fencing_violations += 1
            _detail(v, f"G: {where}ack of {p}/{rid} by stale {member} (token {token}) accepted")

    # -- O, strict ----------------------------------------------------------------------------
    # The records of each key (per partition for a key that moved) in id order, and when each
    # was first completely processed; a record handed out but never completed blocks every
    # later record of its key for good.
    entries: dict[tuple[str, int], set[tuple[Id, Rec]]] = defaultdict(set)
    for rec, (key, _) in acked.items():
        entries[_okey(key, rec[0], moved)].add((parse_id(rec[1]), rec))
    for pr in procs:
        entries[_okey(pr.key, pr.p, moved)].add((parse_id(pr.id), (pr.p, pr.id)))
    handed = {(pr.p, pr.id) for pr in effective}
    first_done: dict[Rec, tuple[float, int]] = {}
    for pr in complete:
        rec = (pr.p, pr.id)
        first_done[rec] = min(first_done.get(rec, (pr.t, pr.n)), (pr.t, pr.n))
    exempt = dead | vanished | set(expected_dead)
    for (key, _), recs in sorted(entries.items()):
        latest: tuple[float, int] | None = None  # the latest first completion of the earlier
        latest_rec: Rec | None = None
        stuck: Rec | None = None  # an earlier record handed out and never completed
        for rec in [r for _, r in sorted(recs)]:
            when = first_done.get(rec)
            if when is not None and stuck is not None:
                v.order_violations += 1
                _detail(v, f"O: {where}{key} {_r(rec)} completed, the earlier {_r(stuck)} never")
            elif when is not None and latest is not None and latest_rec and when < latest:
                v.order_violations += 1
                _detail(
                    v, f"O: {where}{key} {_r(rec)} completed before the earlier {_r(latest_rec)}"
                )
            if rec in exempt or rec not in handed:
                continue
            if when is None:
                stuck = stuck or rec
            elif latest is None or when > latest:
                latest, latest_rec = when, rec
    # One member's hand-outs of a key under one grant move forward.
    runs: dict[tuple[str, int, str, int], list[Proc]] = defaultdict(list)
    for pr in effective:
        okey = _okey(pr.key, pr.p, moved)
        runs[(pr.member, pr.token, *okey)].append(pr)
    for (member, token, key, _), prs in sorted(runs.items()):
        prs.sort(key=lambda x: x.n)
        for a, b in itertools.pairwise(prs):
            if parse_id(b.id) <= parse_id(a.id):
                v.order_violations += 1
                _detail(
                    v,
                    f"O: {where}{key}: {member} (token {token}) went back from "
                    f"{a.p}/{a.id} to {b.p}/{b.id}",
                )
