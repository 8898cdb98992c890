"""The checker fails on hand-made logs that break each rule (and passes clean ones): proof
that a green fault scenario means something. One test per rule, named after it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.checker import DeadLetter, WorkerExit, check
from tests.faults.scenario import KnownFailure, assert_verdict


def sent(key: str, seq: int, p: int, rid: str, ok: bool = True) -> dict[str, Any]:
    if not ok:
        return {"ev": "sent", "key": key, "seq": seq, "ok": False, "err": "ConnectionFailedError"}
    return {"ev": "sent", "key": key, "seq": seq, "ok": True, "p": p, "id": rid}


def proc(
    member: str, p: int, rid: str, key: str, seq: int, token: int, t: float, group: str = "g"
) -> dict[str, Any]:
    return {
        "ev": "proc", "p": p, "id": rid, "key": key, "seq": seq, "member": member,
        "group": group, "token": token, "t0": t - 0.01, "t1": t - 0.005, "t": t,
    }  # fmt: skip


def ack(
    member: str,
    p: int,
    ids: list[str],
    token: int,
    t: float,
    out: str = "ok",
    group: str = "g",
) -> dict[str, Any]:
    return {
        "ev": "ack",
        "p": p,
        "ids": ids,
        "member": member,
        "group": group,
        "token": token,
        "outcome": out,
        "t": t,
    }


SENDS = [sent("a", 1, 0, "1-0"), sent("a", 2, 0, "2-0"), sent("a", 3, 0, "3-0")]


def clean() -> list[dict[str, Any]]:
    return [
        proc("m1", 0, "1-0", "a", 1, 1, 1.0),
        proc("m1", 0, "2-0", "a", 2, 1, 1.1),
        ack("m1", 0, ["1-0", "2-0"], 1, 1.2),
        proc("m1", 0, "3-0", "a", 3, 1, 1.3),  # unacked at the crash of m1
        proc("m2", 0, "3-0", "a", 3, 2, 3.0),  # redelivered to the new owner
        ack("m2", 0, ["3-0"], 2, 3.1),
    ]


def test_clean_log_with_a_crash_redelivery_passes() -> None:
    v = check("t", "f", SENDS, clean(), expected_count=3)
    assert v.ok and v.duplicated == 1 and v.lost == 0, v.report()


# -- L -----------------------------------------------------------------------------------------
def test_a_lost_record_fails_L() -> None:
    v = check("t", "f", SENDS, clean()[:3])  # record 3 processed by nobody
    assert v.failed_on() == {"L"} and v.lost == 1


def test_an_expected_dead_letter_is_not_lost() -> None:
    dlq = [DeadLetter(0, "3-0", "g", "max_deliveries")]
    v = check("t", "f", SENDS, clean()[:4], dlq, expected_dead={(0, "3-0"): "max_deliveries"})
    assert v.ok, v.report()


def test_an_unexpected_dead_letter_is_a_loss() -> None:
    """The old checker counted every dead letter as "not lost": a library that dead-letters
    records nobody poisoned passed. A dead letter nobody caused is a loss (DESIGN, L)."""
    dlq = [DeadLetter(0, "3-0", "g", "max_deliveries")]
    v = check("t", "f", SENDS, clean()[:4], dlq)
    assert v.failed_on() == {"L", "dlq"} and v.unexpected_dead == 1 and v.lost == 1, v.report()


def test_a_dead_letter_of_a_processed_record_is_still_unexpected() -> None:
    dlq = [DeadLetter(0, "2-0", "g", "max_deliveries")]
    v = check("t", "f", SENDS, clean(), dlq)
    assert v.failed_on() == {"dlq"} and v.lost == 0, v.report()


def test_a_dead_letter_with_another_reason_than_the_fault_caused_fails() -> None:
    dlq = [DeadLetter(0, "3-0", "g", "max_deliveries")]
    v = check("t", "f", SENDS, clean()[:4], dlq, expected_dead={(0, "3-0"): "trimmed"})
    assert "dlq" in v.failed_on() and not v.ok


def test_a_record_may_ride_along_in_the_dlq_only_where_allowed() -> None:
    dlq = [DeadLetter(0, "2-0", "g", "max_deliveries"), DeadLetter(0, "3-0", "g", "max_deliveries")]
    log = [proc("m1", 0, "1-0", "a", 1, 1, 1.0), ack("m1", 0, ["1-0"], 1, 1.1)]
    poison = {(0, "3-0"): "max_deliveries"}
    ok = check(
        "t", "f", SENDS, log, dlq, expected_dead=poison, may_dead={(0, "2-0"): "max_deliveries"}
    )
    assert ok.ok, ok.report()
    assert check("t", "f", SENDS, log, dlq, expected_dead=poison).failed_on() == {"L", "dlq"}


def test_L_holds_per_group() -> None:
    """Two groups on one topic: each must process every record; one that missed a record
    fails although the other processed it."""
    log = [
        *clean(),
        proc("n1", 0, "1-0", "a", 1, 1, 1.0, group="h"),
        proc("n1", 0, "2-0", "a", 2, 1, 1.1, group="h"),
        ack("n1", 0, ["1-0", "2-0"], 1, 1.2, group="h"),
    ]
    v = check("t", "f", SENDS, log, groups=["g", "h"])
    assert v.failed_on() == {"L"} and v.lost == 1 and v.groups == 2, v.report()
    assert any("[h]" in d for d in v.details), v.details


def test_a_group_that_logged_nothing_lost_everything() -> None:
    v = check("t", "f", SENDS, clean(), groups=["g", "h"])
    assert v.lost == 3 and not v.ok


def test_a_record_processed_only_by_a_refused_zombie_is_lost() -> None:
    log = [
        *clean()[:3],
        proc("m1", 0, "3-0", "a", 3, 1, 1.3),
        ack("m1", 0, ["3-0"], 1, 1.4, "refused"),
    ]
    v = check("t", "f", SENDS, log)
    assert v.lost == 1 and v.zombie_refused == 1 and not v.ok


def test_bounded_loss_is_reported_and_allowed_only_up_to_the_bound() -> None:
    assert check("t", "f", SENDS, clean()[:3], allowed_loss=1).ok
    assert not check("t", "f", SENDS, clean()[:2], allowed_loss=1).ok


# -- O -----------------------------------------------------------------------------------------
def test_reordering_fails_O() -> None:
    log = [
        proc("m1", 0, "2-0", "a", 2, 1, 1.0),
        proc("m1", 0, "1-0", "a", 1, 1, 1.1),
        proc("m1", 0, "3-0", "a", 3, 1, 1.2),
        ack("m1", 0, ["1-0", "2-0", "3-0"], 1, 1.3),
    ]
    v = check("t", "f", SENDS, log)
    assert v.failed_on() == {"O"}


def test_a_new_owner_reading_new_entries_before_the_dead_owners_pending_fails_strict_O() -> None:
    """m1 processes 3 and dies before acking it; m2 then processes 4 before 3. The old
    checker allowed this ("going back" after a crash); strictly, 4 is processed for the
    first time before the earlier 3 was processed (completely) at least once."""
    sends = [*SENDS, sent("a", 4, 0, "4-0")]
    log = [
        *clean()[:4],  # 1, 2 acked; 3 processed by m1, never acked: m1 is killed
        proc("m2", 0, "4-0", "a", 4, 2, 3.0),  # the new owner reads the new entry first
        proc("m2", 0, "3-0", "a", 3, 2, 3.1),
        ack("m2", 0, ["4-0", "3-0"], 2, 3.2),
    ]
    v = check("t", "f", sends, log)
    assert v.failed_on() == {"O"} and v.lost == 0, v.report()


def test_a_record_completed_while_an_earlier_handed_out_one_never_is_fails_O() -> None:
    """The dead owner's unacked record is never processed again (it sits pending) while the
    new owner processes newer ones: L fails, and O too (not only L)."""
    sends = [*SENDS, sent("a", 4, 0, "4-0")]
    log = [*clean()[:4], proc("m2", 0, "4-0", "a", 4, 2, 3.0), ack("m2", 0, ["4-0"], 2, 3.1)]
    v = check("t", "f", sends, log)
    assert v.failed_on() == {"L", "O"}, v.report()


def test_going_back_within_one_grant_fails_O() -> None:
    log = [
        *clean()[:3],
        proc("m1", 0, "3-0", "a", 3, 1, 1.3),
        proc("m1", 0, "2-0", "a", 2, 1, 1.4),  # redelivered by the same owner, after 3
        ack("m1", 0, ["3-0", "2-0"], 1, 1.5),
    ]
    v = check("t", "f", SENDS, log)
    assert v.failed_on() == {"O"}, v.report()


def test_appended_out_of_send_order_fails_O() -> None:
    sends = [sent("a", 2, 0, "1-0"), sent("a", 1, 0, "2-0")]
    log = [proc("m1", 0, "1-0", "a", 2, 1, 1.0), proc("m1", 0, "2-0", "a", 1, 1, 1.1),
           ack("m1", 0, ["1-0", "2-0"], 1, 1.2)]  # fmt: skip
    assert check("t", "f", sends, log).order_violations == 1


def test_a_record_the_server_lost_does_not_block_the_keys_order() -> None:
    """An allowed AOF loss: record 3 was handed out, then vanished with the server's last
    second; record 4 (appended after the restart) is not an order violation."""
    sends = [*SENDS, sent("a", 4, 0, "4-0")]
    log = [*clean()[:4], proc("m2", 0, "4-0", "a", 4, 2, 3.0), ack("m2", 0, ["4-0"], 2, 3.1)]
    present = {(0, "1-0"), (0, "2-0"), (0, "4-0")}
    v = check("t", "f", sends, log, present=present, allowed_loss=1)
    assert v.ok and v.lost == 1, v.report()


def test_a_key_that_moved_partition_is_ordered_per_partition_only() -> None:
    """After growth, key a's new records go to partition 1 and are processed before the
    old partition's backlog: promised only per partition, so not a violation for a moved
    key, and a violation for a key that stayed."""
    sends = [sent("a", 1, 0, "1-0"), sent("a", 2, 0, "2-0"), sent("a", 3, 1, "3-0")]
    log = [
        proc("m2", 1, "3-0", "a", 3, 1, 1.0),
        ack("m2", 1, ["3-0"], 1, 1.1),
        proc("m1", 0, "1-0", "a", 1, 1, 2.0),
        proc("m1", 0, "2-0", "a", 2, 1, 2.1),
        ack("m1", 0, ["1-0", "2-0"], 1, 2.2),
    ]
    assert check("t", "f", sends, log, moved_keys={"a"}).ok
    assert check("t", "f", sends, log).failed_on() == {"O"}


# -- D, G --------------------------------------------------------------------------------------
def test_redelivery_of_an_acked_record_fails_D() -> None:
    log = [*clean(), proc("m2", 0, "1-0", "a", 1, 2, 4.0), ack("m2", 0, ["1-0"], 2, 4.1)]
    v = check("t", "f", SENDS, log)
    assert v.duplicate_violations == 1 and "D" in v.failed_on()


def test_a_duplicate_append_fails_D() -> None:
    sends = [*SENDS, sent("a", 3, 0, "4-0")]
    log = [*clean(), proc("m2", 0, "4-0", "a", 3, 2, 3.2), ack("m2", 0, ["4-0"], 2, 3.3)]
    v = check("t", "f", sends, log)
    assert v.duplicate_appends == 1 and v.failed_on() == {"dup-appends"}
    assert check("t", "f", sends, log, allowed_duplicate_appends=1).ok


def test_two_members_under_one_grant_fail_G() -> None:
    log = [*clean()[:3], proc("m2", 0, "3-0", "a", 3, 1, 1.3), ack("m2", 0, ["3-0"], 1, 1.4)]
    v = check("t", "f", SENDS, log)
    assert v.fencing_violations >= 1 and not v.ok


def test_a_zombie_ack_accepted_after_a_newer_read_fails_G() -> None:
    log = [
        proc("m1", 0, "1-0", "a", 1, 1, 1.0),
        proc("m2", 0, "1-0", "a", 1, 2, 3.0),  # the new owner read it at ~3.0
        ack("m2", 0, ["1-0"], 2, 3.1),
        ack("m1", 0, ["1-0"], 1, 5.0),  # the zombie's late ack went through: must not
        proc("m2", 0, "2-0", "a", 2, 2, 3.2),
        proc("m2", 0, "3-0", "a", 3, 2, 3.3),
        ack("m2", 0, ["2-0", "3-0"], 2, 3.4),
    ]
    v = check("t", "f", SENDS, log)
    assert v.fencing_violations == 1 and not v.ok


def test_a_stale_owner_reading_after_a_newer_one_fails_G() -> None:
    log = [
        proc("m2", 0, "1-0", "a", 1, 2, 1.0),
        ack("m2", 0, ["1-0"], 2, 1.1),
        proc("m1", 0, "2-0", "a", 2, 1, 2.0),  # token 1 read after token 2 did
        ack("m1", 0, ["2-0"], 1, 2.1, "refused"),
        proc("m2", 0, "2-0", "a", 2, 2, 2.2),
        proc("m2", 0, "3-0", "a", 3, 2, 2.3),
        ack("m2", 0, ["2-0", "3-0"], 2, 2.4),
    ]
    v = check("t", "f", SENDS, log)
    assert v.fencing_violations == 1 and not v.ok


# -- the run happened --------------------------------------------------------------------------
def test_a_worker_that_exited_non_zero_fails_the_run() -> None:
    exits = [
        WorkerExit("c1", "consume", 0),
        WorkerExit("c2", "consume", -9, expected=(-9,)),  # the scenario killed it
        WorkerExit("c3", "consume", 1),  # a traceback nobody expected
    ]
    v = check("t", "f", SENDS, clean(), workers=exits)
    assert v.failed_on() == {"exit"} and len(v.bad_exits) == 1 and "c3" in v.bad_exits[0]
    still = check("t", "f", SENDS, clean(), workers=[WorkerExit("p1", "produce", None)])
    assert still.failed_on() == {"exit"}


def test_produced_not_equal_to_count_fails_the_run() -> None:
    """A producer that stopped early (or never resolved some futures) sent fewer records than
    asked: the checker would otherwise only check the records that exist."""
    v = check("t", "f", SENDS, clean(), expected_count=5)
    assert v.failed_on() == {"produced"}, v.report()


def test_unexpected_in_doubt_fails_and_expected_doubt_is_bounded() -> None:
    sends = [*SENDS, sent("a", 4, 0, "", ok=False)]
    v = check("t", "f", sends, clean(), expected_count=4)
    assert v.failed_on() == {"in-doubt"} and v.in_doubt == 1
    assert check("t", "f", sends, clean(), expected_count=4, allowed_in_doubt=1).ok
    two = [*sends, sent("a", 5, 0, "", ok=False)]
    assert check("t", "f", two, clean(), expected_count=5, allowed_in_doubt=1).failed_on() == {
        "in-doubt"
    }


def test_a_scenario_requirement_fails_the_run() -> None:
    v = check("t", "f", SENDS, clean())
    v.require(False, "the kill did not land mid-batch")
    assert v.failed_on() == {"run"}


def test_a_known_failure_is_told_apart_from_any_other() -> None:
    dlq = [DeadLetter(0, "3-0", "g", "max_deliveries")]
    only_dlq = check("t", "f", SENDS, clean(), dlq)
    with pytest.raises(KnownFailure):
        assert_verdict(only_dlq, known=("dlq",))
    also_lost = check("t", "f", SENDS, clean()[:4], dlq)
    with pytest.raises(AssertionError) as err:
        assert_verdict(also_lost, known=("dlq",))
    assert not isinstance(err.value, KnownFailure)
