"""``partstream bench coordinator`` through the CLI, in a tiny configuration (no server)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from partitions._base.types import MemberSubscription, TopicPartition
from partitions.bench.assignors import chain_balanced, per_topic_even
from partitions.cli import main

SMALL = ["--members", "30", "--partitions", "600", "--topics", "6"]


def test_json_reports_every_case_checked(tmp_path: Path) -> None:
    out = tmp_path / "coordinator.json"
    result = CliRunner().invoke(
        main, ["bench", "coordinator", *SMALL, "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(out.read_text())
    assert data["mode"] == "coordinator"
    assert data["command"] == (
        "partstream bench coordinator --members 30 --partitions 600 --topics 6"
    )
    assert [c["case"] for c in data["cases"]] == ["scratch", "leave", "join"]
    for case in data["cases"]:
        assert case["balanced"] and case["per_topic_even"]
        assert case["median_s"] >= 0 and len(case["seconds"]) == 1
    assert data["cases"][0]["moved"] == 0
    assert data["env"]["cpu_count"] >= 1 and data["env"]["python"]


def test_text_lines_and_equal_subscriptions() -> None:
    result = CliRunner().invoke(
        main, ["bench", "coordinator", *SMALL, "--subscriptions", "equal", "--repeat", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("-- coordinator: uniform assignor, 30 members x 600 partitions")
    assert [line.split(":")[0] for line in lines[1:4]] == ["scratch", "leave", "join"]
    assert all("median of 2" in line and "balanced yes" in line for line in lines[1:4])
    assert "loads 20..20" in lines[1]
    assert lines[4].startswith("env: ")


def test_other_assignors_and_bad_options() -> None:
    result = CliRunner().invoke(main, ["bench", "coordinator", *SMALL, "--assignor", "range"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["bench", "coordinator", "--assignor", "sticky"])
    assert bad.exit_code == 1 and "unknown assignor 'sticky'" in bad.output
    bad = CliRunner().invoke(main, ["bench", "coordinator", "--topics", "10", "--partitions", "5"])
    assert bad.exit_code == 1 and "at least one partition per topic" in bad.output


def test_chain_check_sees_an_unbalanced_chain() -> None:
    """The bench's balance check is its own (not the assignor's): it flags 1/2/3 where only
    a chain of two moves (c -> b -> a) narrows the gap."""
    members = {
        "a": MemberSubscription(frozenset({"x"})),
        "b": MemberSubscription(frozenset({"x", "y"})),
        "c": MemberSubscription(frozenset({"y"})),
    }
    result = {
        "a": {TopicPartition("x", 0)},
        "b": {TopicPartition("x", 1), TopicPartition("x", 2)},
        "c": {TopicPartition("y", p) for p in range(3)},
    }
    assert not chain_balanced(result, members)
    result["c"].remove(TopicPartition("y", 2))
    result["b"] = {TopicPartition("x", 1), TopicPartition("y", 2)}
    result["a"].add(TopicPartition("x", 2))
    assert chain_balanced(result, members)


def test_per_topic_check_sees_a_skew() -> None:
    """Balanced in count, one topic each: flagged; one of each: not."""
    sub = MemberSubscription(frozenset({"t1", "t2"}))
    members = {"a": sub, "b": sub}
    skewed = {
        "a": {TopicPartition("t1", 0), TopicPartition("t1", 1)},
        "b": {TopicPartition("t2", 0), TopicPartition("t2", 1)},
    }
    assert not per_topic_even(skewed, members)
    even = {
        "a": {TopicPartition("t1", 0), TopicPartition("t2", 0)},
        "b": {TopicPartition("t1", 1), TopicPartition("t2", 1)},
    }
    assert per_topic_even(even, members)
