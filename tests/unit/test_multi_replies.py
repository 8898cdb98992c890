"""How the sender reads a MULTI batch's replies (``MULTI, XADD x n, FCALL commit, EXEC``)
and what it does after: one batch reply in append.lua's terms, without a server."""

from __future__ import annotations

from typing import cast

import redis.exceptions as rex

from partitions._client.config import ProducerConfig
from partitions._producer.accumulator import Accumulator
from partitions._producer.batch import (
    MULTI_MAX_RECORDS,
    MULTI_MIN_RECORDS,
    Batch,
    Route,
    multi_groups,
)
from partitions._producer.sender import _note_library, _units, _Unrecorded, fold_multi

OK, Q = b"OK", b"QUEUED"
IDS = [b"5-0", b"5-1", b"5-2"]


def test_committed_batch_is_its_xadds_ids() -> None:
    assert fold_multi([OK, Q, Q, Q, Q, [*IDS, [1]]], [3]) == [[1, *IDS]]


def test_batches_of_one_multi_each_get_their_own_outcome() -> None:
    """One MULTI for a round's batches (a single server): each batch's ids are its slice of
    EXEC's reply, its outcome its place in commit's."""
    dup = [2, b"4-0", b"4-1"]
    lost = rex.ResponseError("OUTOFSEQ producer p sent batch 3 after 1")
    got = fold_multi([OK, Q, Q, Q, Q, Q, Q, Q, [*IDS, b"6-0", b"6-1", b"7-0", [1, dup, lost]]],
                     [3, 2, 1])  # fmt: skip
    assert got == [[1, *IDS], dup, lost]


def test_commit_error_is_the_batchs_error() -> None:
    err = rex.ResponseError("OUTOFSEQ producer p sent batch 3 after 1")
    assert fold_multi([OK, Q, Q, Q, Q, [*IDS, [err]]], [3]) == [err]


def test_execabort_reports_the_first_refusal() -> None:
    oom = rex.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
    abort = rex.ResponseError("EXECABORT Transaction discarded because of previous errors.")
    assert fold_multi([OK, oom, oom, oom, Q, abort], [3]) == [oom]
    assert fold_multi([OK, oom, oom, Q, Q, abort], [1, 2]) == [oom, oom]


def test_a_broken_connection_is_in_doubt() -> None:
    broken = rex.ConnectionError("Connection closed by server.")
    assert fold_multi([OK, Q, Q, broken, broken, broken], [1, 2]) == [broken, broken]


def test_missing_library_inside_exec_is_appended_unrecorded() -> None:
    missing = rex.ResponseError("Function not found")
    got = fold_multi([OK, Q, Q, Q, Q, Q, [*IDS, b"9-0", missing]], [3, 1])
    assert [type(g) for g in got] == [_Unrecorded, _Unrecorded]
    assert [g.reply for g in got] == [[1, *IDS], [1, b"9-0"]]


def test_multi_refused_reads_the_commands_replies_in_place() -> None:
    """MULTI refused (an ACL without it): the XADDs and the commit ran one by one, and
    their replies stand where QUEUED would have."""
    noperm = rex.NoPermissionError("User may not run MULTI")
    no_multi = rex.ResponseError("EXEC without MULTI")
    assert fold_multi([noperm, *IDS, [1], no_multi], [3]) == [[1, *IDS]]


def test_failed_xadds_fail_their_batch() -> None:
    wrong = rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    got = fold_multi([OK, Q, Q, Q, [wrong, wrong, b"3-0", [wrong, 1]]], [2, 1])
    assert got == [wrong, [1, b"3-0"]]


def test_the_library_is_trusted_only_after_a_success_and_until_a_sign_it_went() -> None:
    loaded: set[object] = set()
    node = object()
    _note_library(loaded, node, [rex.ResponseError("BUSY")])
    assert node not in loaded
    _note_library(loaded, node, [[1, b"1-0"]])
    assert node in loaded
    _note_library(loaded, node, [_Unrecorded([1, b"1-0"])])
    assert node not in loaded
    _note_library(loaded, node, [[1, b"1-0"]])
    _note_library(loaded, node, [[1, b"1-0"], rex.ConnectionError("reset")])
    assert node not in loaded
    _note_library(loaded, node, [[1, b"1-0"]])
    _note_library(loaded, node, [rex.ResponseError("ERR Function not found")])
    assert node not in loaded


def test_an_unrecorded_batch_changes_the_producer_id() -> None:
    ids = iter([b"p1", b"p2"])
    acc = Accumulator(ProducerConfig(), lambda: 0.0, new_id=lambda: next(ids))
    acc._seqs[("t", 0)] = 7

    class B:
        topic, partition, pid = "t", 0, b"p1"

    acc.unrecorded(B())  # type: ignore[arg-type]
    assert acc.pid == b"p2" and acc._seqs == {}
    acc.unrecorded(B())  # type: ignore[arg-type]  # an older identity's batch: no change
    assert acc.pid == b"p2"


def test_a_refused_multi_stops_multi_batches_there() -> None:
    from partitions._producer.sender import _multi_refused, _Unit

    class B:
        ask = None
        count = 3

    units = [_Unit([B()], True)]  # type: ignore[list-item]
    noperm = rex.NoPermissionError("User may not run MULTI")
    assert _multi_refused([noperm, *IDS, [1], rex.ResponseError("EXEC without MULTI")], units)
    assert not _multi_refused([OK, Q, Q, Q, Q, [*IDS, [1]]], units)


def _batches(*counts: int) -> list[Batch]:
    out = []
    for p, n in enumerate(counts):
        b = Batch("t", p, cast(Route, None), 0.0, 1.0)
        b.count = n
        out.append(b)
    return out


def test_a_round_goes_in_multis_of_at_most_the_cap_of_whole_batches() -> None:
    """A single server's round: whole batches, in order, at most ``cap`` records a MULTI;
    a batch larger than the cap alone (a batch is never split: all or nothing)."""
    got = multi_groups(_batches(400, 400, 400, 100, 2000, 10), cap=1024)
    assert [[b.count for b in g] for g in got] == [[400, 400], [400, 100], [2000], [10]]
    assert [b.count for b in multi_groups(_batches(1024), cap=1024)[0]] == [1024]
    assert multi_groups([], cap=1024) == []
    assert MULTI_MAX_RECORDS >= 1000 >= MULTI_MIN_RECORDS


def test_a_multi_holds_batches_of_one_producer_id() -> None:
    """``commit.lua`` takes the producer id once a call: a batch retried under the id the
    producer had before it took a new one goes in a MULTI of its own id, not with the
    batches of the new id (which the commit would check against the wrong sequence)."""
    batches = _batches(10, 10, 10, 10)
    for b, pid in zip(batches, [b"old", b"new", b"new", b"old"], strict=True):
        b.pid = pid
    got = multi_groups(batches, cap=1024)
    assert [[(b.partition, b.pid) for b in g] for g in got] == [
        [(0, b"old")],
        [(1, b"new"), (2, b"new")],
        [(3, b"old")],
    ]


def test_units_of_a_single_server_follow_the_groups() -> None:
    units = _units(_batches(600, 600, 3), multi=True, cluster=False)
    assert [(len(u.batches), u.multi) for u in units] == [(1, True), (2, True)]
    # no batch of several records: FCALL append each; on a cluster one MULTI per batch
    assert [u.multi for u in _units(_batches(1, 2), multi=True, cluster=False)] == [False] * 2
    assert [len(u.batches) for u in _units(_batches(600, 600), True, cluster=True)] == [1, 1]
