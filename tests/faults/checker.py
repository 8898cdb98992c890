"""The invariant checker: L, G, O, D of DESIGN.md over the outcomes workers logged.

Pure functions over plain data (the JSON lines of :mod:`tests.faults.worker` plus what the
server holds at the end), so the checker itself is unit-tested on hand-made logs that break
each invariant (``test_checker.py``): a checker that cannot fail proves nothing.

Terms. A *send* is acknowledged when its producer future resolved (``sent``/``ok``). A
*processing* is one ``proc`` line; it is *effective* unless its commit was ``refused`` by the
fence (a zombie's late work: the partition had moved on, and the new owner processes the
record again). Entry ids order the records of a partition: that is the append order.

* **L** (no loss): every acknowledged send has an effective processing whose ack was ``ok``
  or ``unknown`` (the run drained to zero lag, so an unknown ack did land), or is in the
  dead-letter stream. Missing ones are *lost*.
* **G** (one owner): (a) two members never process under the same grant (partition, token);
  (b) no read under token t starts after a read under a newer token t' > t of the same
  partition returned (a superseded owner received entries); (c) no ack under token t is
  accepted after a newer token read the partition (a zombie's late ack went through).
* **O** (order): per key, effective processings in time order walk the key's entries in id
  order; going back is allowed (a redelivery after a crash/revocation: prefix-repeat), going
  forward over an entry that is processed some other time is a violation; so is a key whose
  acknowledged sends' ids do not follow its send sequence (the producer reordered).
* **D** (bounded duplicates): a record is processed again only if no earlier processing's
  ack had been accepted before the new read started. Also: no (key, seq) appended twice
  (idempotent production).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Id = tuple[int, int]


def parse_id(text: str) -> Id:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Verdict:
    """The outcome of one scenario: counts and invariant violations (see the module doc)."""

    scenario: str
    fault: str
    produced: int = 0  # acknowledged sends
    in_doubt: int = 0  # sends whose future failed (may or may not be in the stream)
    processed: int = 0  # distinct records effectively processed
    duplicated: int = 0  # extra effective processings (redeliveries)
    lost: int = 0
    dead_lettered: int = 0
    order_violations: int = 0
    fencing_violations: int = 0
    duplicate_violations: int = 0  # D: re-processing of an already acked record
    duplicate_appends: int = 0  # the same (key, seq) appended twice
    zombie_refused: int = 0  # processings whose commit the fence refused
    allowed_loss: int = 0  # documented bound for this scenario (e.g. AOF everysec)
    allowed_duplicate_violations: int = 0
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost <= self.allowed_loss
            and self.order_violations == 0
            and self.fencing_violations == 0
            and self.duplicate_violations <= self.allowed_duplicate_violations
            and self.duplicate_appends == 0
        )

    def line(self) -> str:
        flag = "OK  " if self.ok else "FAIL"
        extra = f" notes: {'; '.join(self.notes)}" if self.notes else ""
        bound = f"(<= {self.allowed_loss} allowed)" if self.allowed_loss else ""
        return (
            f"{flag} {self.scenario:<24} {self.fault:<34} produced={self.produced} "
            f"processed={self.processed} duplicated={self.duplicated} lost={self.lost}{bound} "
            f"dlq={self.dead_lettered} order={self.order_violations} "
            f"fencing={self.fencing_violations} redelivered-after-ack={self.duplicate_violations}"
            f" dup-appends={self.duplicate_appends} zombie-refused={self.zombie_refused}{extra}"
        )


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
    n: int  # position in its worker's log: breaks time ties within one process


def check(
    scenario: str,
    fault: str,
    producer_events: Iterable[dict[str, Any]],
    consumer_events: Iterable[dict[str, Any]],
    dead_letters: Iterable[tuple[int, str]] = (),
    *,
    allowed_loss: int = 0,
    allowed_duplicate_violations: int = 0,
) -> Verdict:
    """Check L, G, O, D; ``dead_letters``: (partition, original id) found in the DLQ."""
    v = Verdict(scenario, fault, allowed_loss=allowed_loss)
    v.allowed_duplicate_violations = allowed_duplicate_violations
    dlq = set(dead_letters)
    v.dead_lettered = len(dlq)

    acked: dict[tuple[int, str], tuple[str, int]] = {}
    for e in producer_events:
        if e.get("ev") != "sent":
            continue
        if e["ok"]:
            acked[(e["p"], e["id"])] = (e["key"], e["seq"])
        else:
            v.in_doubt += 1
    v.produced = len(acked)

    procs: list[Proc] = []
    acks: dict[tuple[str, int, str, int], tuple[str, float]] = {}
    for n, e in enumerate(consumer_events):
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
    v.zombie_refused = len(procs) - len(effective)

    # -- L ------------------------------------------------------------------------------------
    done = {(pr.p, pr.id) for pr in effective if outcome(pr)[0] in ("ok", "unknown")}
    seen = {(pr.p, pr.id) for pr in effective}
    v.processed = len(seen)
    for rec, (key, seq) in sorted(acked.items()):
        if rec not in done and rec not in dlq:
            v.lost += 1
            if len(v.details) < 20:
                v.details.append(f"L: {key}#{seq} at {rec[0]}/{rec[1]} never processed+acked")

    # -- D ------------------------------------------------------------------------------------
    by_rec: dict[tuple[int, str], list[Proc]] = defaultdict(list)
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
                    v.details.append(f"D: {rec} processed again after its ack was accepted")
                    break
    keyseqs: dict[tuple[str, int], set[tuple[int, str]]] = defaultdict(set)
    for pr in procs:
        keyseqs[(pr.key, pr.seq)].add((pr.p, pr.id))
    for (p, rid), ks in acked.items():
        keyseqs[ks].add((p, rid))
    for ks, recs in keyseqs.items():
        if len(recs) > 1:
            v.duplicate_appends += len(recs) - 1
            v.details.append(f"D: {ks[0]}#{ks[1]} appended {len(recs)} times: {sorted(recs)}")

    # -- G ------------------------------------------------------------------------------------
    holders: dict[tuple[int, int], set[str]] = defaultdict(set)
    for pr in procs:
        holders[(pr.p, pr.token)].add(pr.member)
    for (p, token), members in holders.items():
        if len(members) > 1:
            v.fencing_violations += 1
            v.details.append(f"G: {p} token {token} used by {sorted(members)}")
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
        v.details.append(f"G: {p} read under token {token} after a newer owner read it")
    for (member, p, rid, token), (out, t) in acks.items():
        if out == "ok" and newer_read_before(p, token, t):
            v.fencing_violations += 1
            v.details.append(f"G: ack of {p}/{rid} by stale {member} (token {token}) accepted")

    # -- O ------------------------------------------------------------------------------------
    entries: dict[str, set[Id]] = defaultdict(set)
    for (_, rid), (key, _) in acked.items():
        entries[key].add(parse_id(rid))
    for pr in procs:
        entries[pr.key].add(parse_id(pr.id))
    sends: dict[str, list[tuple[Id, int]]] = defaultdict(list)
    for (_, rid), (key, seq) in acked.items():
        sends[key].append((parse_id(rid), seq))
    for key, pairs in sends.items():
        seqs = [seq for _, seq in sorted(pairs)]
        bad = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        if bad:
            v.order_violations += bad
            v.details.append(f"O: {key} appended out of send order {bad} time(s)")
    dlq_ids = {parse_id(rid) for _, rid in dlq}
    per_key: dict[str, list[Proc]] = defaultdict(list)
    for pr in effective:
        per_key[pr.key].append(pr)
    for key, prs in per_key.items():
        order = sorted(entries[key])
        index = {rid: i for i, rid in enumerate(order)}
        times: dict[int, list[float]] = defaultdict(list)
        for pr in prs:
            times[index[parse_id(pr.id)]].append(pr.t)
        last = -1
        for pr in sorted(prs, key=lambda x: (x.t, x.n)):
            i = index[parse_id(pr.id)]
            if i > last + 1:
                skipped = [
                    j
                    for j in range(last + 1, i)
                    if order[j] not in dlq_ids and any(t > pr.t for t in times[j])
                ]
                if skipped:
                    v.order_violations += 1
                    v.details.append(
                        f"O: {key} processed {pr.id} before {len(skipped)} earlier entries"
                    )
            last = i
    return v
