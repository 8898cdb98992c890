"""The exactly-once pipeline's pure parts: mode choice, routing and encoding of outputs, the
transact.lua calls planned, their replies settled, and the steps of one commit driven by a
scripted server (no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from partitions import ConfigError, InvalidRecordError, NotOwnerError, Output, StateLostError
from partitions._admin.topics import TopicMeta, TopicSpec
from partitions._base.errors import RecordTooLargeError
from partitions._base.functions import Send, function_name
from partitions._base.keys import Keys, TopicLayout
from partitions._base.records import Record
from partitions._pipeline import plan
from partitions._pipeline.pipeline import METADATA_MAX_AGE_S, Commit, PipelineCore
from partitions._producer.router import Router

K = Keys("ns")
IN = Record("in", 3, "100-7", b"k", b"v", {})
SOURCE = TopicLayout.spread("in", 4)  # the input topic's layout (chosen tags)
OUT = TopicLayout.spread("out", 4)
METAS = {
    "out": TopicMeta(TopicSpec("out", 4, max_length=500), 0, 1, OUT.tags),
    "reg": TopicMeta(TopicSpec("reg", 6, regions={"eu": (2, 4)}), 0, 1),
}


def blocks(outputs: list[Output], partition: int = 3) -> list[plan.Block]:
    return plan.blocks_for(outputs, METAS, partition, 1000)[0]


def test_auto_is_atomic_unless_on_a_cluster_and_atomic_on_a_cluster_is_refused() -> None:
    assert plan.choose_mode("auto", cluster=False) == "atomic"
    assert plan.choose_mode("auto", cluster=True) == "idempotent"
    assert plan.choose_mode("idempotent", cluster=False) == "idempotent"
    with pytest.raises(ConfigError, match="not a Cluster"):
        plan.choose_mode("atomic", cluster=True)
    with pytest.raises(ConfigError, match="mode must be"):
        plan.choose_mode("exactly", cluster=False)


def test_outputs_route_like_the_producer_and_keyless_ones_follow_the_input_partition() -> None:
    keyed = Router(4).for_key(b"user-1")
    got = blocks(
        [
            Output("out", "a", key="user-1"),
            Output("out", "b", partition=0),
            Output("out", "c"),  # keyless: input partition 3 % 4
            Output("reg", "d", region="eu"),  # keyless in eu's range 2..4: 2 + 3 % 3
            Output("out", "e", key="user-1"),
        ]
    )
    where = {(b.topic, b.partition): b.indexes for b in got}
    assert where[("out", keyed)][-1] == 4 and 0 in where[("out", keyed)]
    assert where[("out", 0)] == [1]
    assert 2 in where[("out", 3)]
    assert where[("reg", 2)] == [3]
    # One block per output partition, in order of first use.
    assert (got[0].topic, got[0].partition) == ("out", keyed)


def test_records_are_encoded_in_append_luas_two_shapes() -> None:
    (b,) = blocks([Output("out", b"v1", key=b"k", partition=1)])
    assert b.args == [b"0", b"k", b"v1"]
    (b,) = blocks([Output("out", {"x": 1}, headers={"trace": "t"}, partition=1)])
    assert b.args == [b"4", b"value", b'{"x":1}', b"h:trace", b"t"]
    assert b.retention() == [500, 0, 0]


@pytest.mark.parametrize(
    ("outputs", "error", "match"),
    [
        ([Output("out", "v", partition=4)], ConfigError, "partitions 0..3"),
        ([Output("out", "v", partition=True)], ConfigError, "not True"),
        ([Output("reg", "v", key="k", region="us")], ConfigError, "unknown region"),
        ([("out", "v")], ConfigError, "partitions.Output"),
        ([Output("out", "x" * 2000, key="k")], RecordTooLargeError, "max_record_bytes"),
        ([Output("out", "v", key="k")] * (plan.MAX_OUTPUTS + 1), InvalidRecordError, "outputs"),
    ],
)
def test_bad_outputs_raise_before_anything_is_planned(
    outputs: list[Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        blocks(outputs)


def test_the_commit_call_names_the_input_partition_then_two_keys_per_output_partition() -> None:
    bs = blocks([Output("out", "a", partition=1), Output("out", "b", partition=2)])
    call = plan.commit_call(K, IN, SOURCE, "g", "m1 42", bs)
    assert call.name == "transact"
    assert call.keys == [
        K.stream(SOURCE, 3), K.fence(SOURCE, 3), K.stream_groups(SOURCE, 3),
        K.stream(OUT, 1), K.stream_groups(OUT, 1),
        K.stream(OUT, 2), K.stream_groups(OUT, 2),
    ]  # fmt: skip
    assert "{out:2:" + OUT.tags[2] + "}" in call.keys[5]
    assert call.args == [
        "commit", "g", "m1 42", "100-7", 2,
        500, 0, 0, 1, b"2", b"value", b"a",
        500, 0, 0, 1, b"2", b"value", b"b",
    ]  # fmt: skip
    assert call.command[1] == function_name("transact")


def test_the_apply_call_carries_the_source_and_the_input_id() -> None:
    (b,) = blocks([Output("out", "a", key="k", partition=2)])
    call = plan.apply_call(K, IN, "g", b)
    assert call.keys == [K.stream(OUT, 2), K.stream_groups(OUT, 2), K.applied(OUT, 2)]
    assert call.args[:3] == ["apply", "g in 3", "100-7"]
    assert call.args[3:] == [500, 0, 0, 1, b"0", b"k", b"a"]


def test_settling_a_commit_maps_ids_back_to_the_outputs_order() -> None:
    outs = [Output("out", "a", partition=2), Output("out", "b", partition=1),
            Output("out", "c", partition=2)]  # fmt: skip
    bs, n = plan.blocks_for(outs, METAS, 3, 1000)
    done = plan.settle_commit(IN, bs, n, [1, [b"5-0", b"5-1"], [b"6-0"]])
    assert [(w.partition, w.id) for w in done.written if w] == [(2, "5-0"), (1, "6-0"), (2, "5-1")]
    assert not done.duplicate
    again = plan.settle_commit(IN, bs, n, [2])
    assert again.duplicate and again.written == (None, None, None)
    with pytest.raises(NotOwnerError, match="m2 43"):
        plan.settle_commit(IN, bs, n, [0, b"m2 43"])
    with pytest.raises(StateLostError, match="group"):
        plan.settle_commit(IN, bs, n, [-1, b"group"])


def test_settling_applies_drops_the_partitions_that_had_the_input_already() -> None:
    outs = [Output("out", "a", partition=2), Output("out", "b", partition=1)]
    bs, n = plan.blocks_for(outs, METAS, 3, 1000)
    partial = plan.settle_apply(IN, bs, n, [[2, b"100-7"], [1, b"9-0"]])
    assert partial.written[0] is None and partial.written[1] is not None
    assert not partial.duplicate
    assert plan.settle_apply(IN, bs, n, [[2, b"100-7"], [2, b"100-9"]]).duplicate
    assert not plan.settle_apply(IN, [], 0, []).duplicate  # no outputs: only the ack


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def core(mode: plan.Mode, clock: Clock) -> PipelineCore:
    return PipelineCore(K, "g", cluster=mode == "idempotent", mode=mode, retry_for=0.0,
                        durability=None, max_record_bytes=1000, clock=clock)  # fmt: skip


META_HASH = {b"partitions": b"4", b"max_length": b"500", b"created_ms": b"1"}


def drive(steps: Any, server: Any) -> tuple[list[Any], Any]:
    """Run steps against ``server(action) -> reply``; returns (actions, result)."""
    actions: list[Any] = []
    try:
        action = next(steps)
        while True:
            actions.append(action)
            action = steps.send(server(action))
    except StopIteration as stop:
        return actions, stop.value


def test_atomic_steps_read_metadata_once_then_make_one_call() -> None:
    clock = Clock()
    c = core("atomic", clock)
    tags = {"in": SOURCE, "out": OUT}

    def server(action: Any) -> Any:
        assert isinstance(action, Send)
        if action.command[0] == "HGETALL":
            topic = action.command[1].split("{")[1].split("}")[0]
            return {**META_HASH, b"tags": tags[topic].field.encode()}
        return [1, [b"7-0"]]

    outs = [Output("out", "a", partition=1)]
    actions, done = drive(c.steps(IN, outs, "m 1"), server)
    # The output's metadata and the input's (its keys are in the atomic call).
    assert [a.command[0] for a in actions] == ["HGETALL", "HGETALL", "FCALL"]
    fcall = actions[2].command
    assert fcall[4 + 2 * 2] == "commit"  # after FCALL name nkeys and 5 keys
    assert fcall[3:8] == (
        K.stream(SOURCE, 3), K.fence(SOURCE, 3), K.stream_groups(SOURCE, 3),
        K.stream(OUT, 1), K.stream_groups(OUT, 1),
    )  # fmt: skip
    assert done.written[0].id == "7-0"
    actions, _ = drive(c.steps(IN, outs, "m 1"), server)
    assert [a.command[0] for a in actions] == ["FCALL"]  # metadata is fresh
    clock.now += METADATA_MAX_AGE_S + 1
    actions, _ = drive(c.steps(IN, outs, "m 1"), server)
    assert [a.command[0] for a in actions] == ["HGETALL", "HGETALL", "FCALL"]


def test_idempotent_steps_apply_every_partition_before_the_fenced_ack() -> None:
    c = core("idempotent", Clock())
    seen: list[Any] = []

    def server(action: Any) -> Any:
        seen.append(action)
        if isinstance(action, Commit):
            return "m 1"  # the grant is still ours after the ack
        if action.command[0] == "HGETALL":
            return META_HASH
        return [1, b"8-0"]

    outs = [Output("out", "a", partition=1), Output("out", "b", partition=2)]
    _, done = drive(c.steps(IN, outs, "m 1"), server)
    kinds = [type(a).__name__ if isinstance(a, Commit) else a.command[0] for a in seen]
    assert kinds == ["HGETALL", "FCALL", "FCALL", "Commit"]
    assert seen[-1].record is IN
    assert [w.partition for w in done.written if w] == [1, 2]


def test_no_grant_means_nothing_is_sent() -> None:
    steps = core("atomic", Clock()).steps(IN, [Output("out", "a")], None)
    with pytest.raises(NotOwnerError, match="nothing was written"):
        next(steps)


def test_a_revoke_during_the_idempotent_ack_is_not_reported_as_committed() -> None:
    def server(action: Any) -> Any:
        if isinstance(action, Commit):
            return None  # the consumer dropped the partition: its ack was never sent
        return META_HASH if action.command[0] == "HGETALL" else [1, b"8-0"]

    steps = core("idempotent", Clock()).steps(IN, [Output("out", "a", partition=1)], "m 1")
    with pytest.raises(NotOwnerError, match="revoked before its ack"):
        drive(steps, server)
