"""Smoke test of ``partstream bench coordinator --live`` on a small group: the group becomes
stable after the joins and after one more join, the extra join moves no more than its share
(the target), every figure is a measurement, and ``--repeat`` runs rounds of new groups (the
full 1,000 x 10,000 run is in bench/README.md)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from partitions.bench.group_scale import LiveGroupOptions, run_live_group_bench
from partitions.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_live_group_bench_reaches_stable_and_moves_only_a_share(server_url: str) -> None:
    lines: list[str] = []
    opts = LiveGroupOptions(members=40, partitions=400, url=server_url)
    result = run_live_group_bench(opts, say=lines.append)
    (r,) = result["rounds"]
    assert r["after_joins"]["stable"] and r["after_extra_join"]["stable"]
    assert r["stable_group"]["stable"] and r["stable_group"]["rounds"] == 1
    # Sticky: the newcomer's share (400 / 41, rounded up) and nothing else moves.
    assert result["target"] == {
        "name": "partitions moved by the extra join", "value": r["moved_on_extra_join"],
        "goal": 10, "met": True,
    }  # fmt: skip
    assert 1 <= r["moved_on_extra_join"] <= 10
    computed = r["target_computation_seconds"]
    # Members debounce: the joins in a burst leave the computation to the settling rounds.
    assert computed["settling"]["count"] >= 1 and computed["extra_join"]["count"] >= 1
    assert computed["joins"]["count"] <= 5, computed
    # The assignor runs inside every computation that got past the describe.
    assert 1 <= r["assignor_seconds"]["count"] <= computed["all"]["count"]
    assert r["assignor_seconds"]["total"] <= computed["all"]["total"]
    for phase in ("after_joins", "stable_group", "after_extra_join"):
        assert r[phase]["server_us_per_heartbeat"] > 0
    s = result["summary"]
    assert s["seconds_until_stable"] >= r["join_seconds"] > 0
    assert s["server_us_per_heartbeat_stable"] == r["stable_group"]["server_us_per_heartbeat"]
    assert any(line.startswith("the extra join moved") for line in lines)
    assert any(line.startswith("target extra join moves only its share") for line in lines)


def test_live_repeat_runs_rounds_of_new_groups(server_url: str) -> None:
    result = CliRunner().invoke(
        main,
        ["bench", "coordinator", "--live", "--members", "12", "--partitions", "60",
         "--repeat", "2", "--url", server_url, "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["repeat"] == 2 and len(data["rounds"]) == 2
    assert data["target"]["met"] and data["target"]["goal"] == 5
    assert all(r["after_extra_join"]["stable"] for r in data["rounds"])
