"""The checker fails on hand-made logs that break each invariant (and passes a clean one):
proof that a green fault scenario means something."""

from __future__ import annotations

from typing import Any

from tests.faults.checker import check


def sent(key: str, seq: int, p: int, rid: str) -> dict[str, Any]:
    return {"ev": "sent", "key": key, "seq": seq, "ok": True, "p": p, "id": rid}


def proc(member: str, p: int, rid: str, key: str, seq: int, token: int, t: float) -> dict[str, Any]:
    return {
        "ev": "proc", "p": p, "id": rid, "key": key, "seq": seq, "member": member,
        "token": token, "t0": t - 0.01, "t1": t - 0.005, "t": t,
    }  # fmt: skip


def ack(
    member: str, p: int, ids: list[str], token: int, t: float, out: str = "ok"
) -> dict[str, Any]:
    return {
        "ev": "ack",
        "p": p,
        "ids": ids,
        "member": member,
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
    v = check("t", "f", SENDS, clean())
    assert v.ok and v.duplicated == 1 and v.lost == 0, v.details


def test_a_lost_record_fails_L() -> None:
    v = check("t", "f", SENDS, clean()[:3])  # record 3 processed by nobody
    assert not v.ok and v.lost == 1


def test_a_record_only_in_the_dlq_is_not_lost() -> None:
    assert check("t", "f", SENDS, clean()[:3], [(0, "3-0")]).ok


def test_a_record_processed_only_by_a_refused_zombie_is_lost() -> None:
    log = [
        *clean()[:3],
        proc("m1", 0, "3-0", "a", 3, 1, 1.3),
        ack("m1", 0, ["3-0"], 1, 1.4, "refused"),
    ]
    v = check("t", "f", SENDS, log)
    assert v.lost == 1 and v.zombie_refused == 1 and not v.ok


def test_reordering_fails_O() -> None:
    log = [
        proc("m1", 0, "2-0", "a", 2, 1, 1.0),
        proc("m1", 0, "1-0", "a", 1, 1, 1.1),
        proc("m1", 0, "3-0", "a", 3, 1, 1.2),
        ack("m1", 0, ["1-0", "2-0", "3-0"], 1, 1.3),
    ]
    v = check("t", "f", SENDS, log)
    assert v.order_violations == 1 and not v.ok


def test_appended_out_of_send_order_fails_O() -> None:
    sends = [sent("a", 2, 0, "1-0"), sent("a", 1, 0, "2-0")]
    log = [proc("m1", 0, "1-0", "a", 2, 1, 1.0), proc("m1", 0, "2-0", "a", 1, 1, 1.1),
           ack("m1", 0, ["1-0", "2-0"], 1, 1.2)]  # fmt: skip
    assert check("t", "f", sends, log).order_violations == 1


def test_redelivery_of_an_acked_record_fails_D() -> None:
    log = [*clean(), proc("m2", 0, "1-0", "a", 1, 2, 4.0), ack("m2", 0, ["1-0"], 2, 4.1)]
    v = check("t", "f", SENDS, log)
    assert v.duplicate_violations == 1 and not v.ok


def test_a_duplicate_append_fails_D() -> None:
    sends = [*SENDS, sent("a", 3, 0, "4-0")]
    log = [*clean(), proc("m2", 0, "4-0", "a", 3, 2, 3.2), ack("m2", 0, ["4-0"], 2, 3.3)]
    v = check("t", "f", sends, log)
    assert v.duplicate_appends == 1 and not v.ok


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


def test_bounded_loss_is_reported_and_allowed_only_up_to_the_bound() -> None:
    assert check("t", "f", SENDS, clean()[:3], allowed_loss=1).ok
    assert not check("t", "f", SENDS, clean()[:2], allowed_loss=1).ok
