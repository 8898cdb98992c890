"""Smoke test of ``partstream bench coordinator --live`` on a small group: the group becomes
stable after the joins and after one more join, the extra join moves about its share and no
more, and every figure is a measurement (the full 1,000 x 10,000 run is in bench/README.md)."""

from __future__ import annotations

import pytest

from partitions.bench.group_scale import LiveGroupOptions, run_live_group_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_live_group_bench_reaches_stable_and_moves_only_a_share(server_url: str) -> None:
    lines: list[str] = []
    opts = LiveGroupOptions(members=40, partitions=400, url=server_url)
    result = run_live_group_bench(opts, say=lines.append)
    assert result["after_joins"]["stable"] and result["after_extra_join"]["stable"]
    share = result["fair_share"]
    assert 1 <= result["moved_on_extra_join"] <= 2 * share + 1  # sticky: about one share
    computed = result["target_computation_seconds"]
    # Members debounce: the joins in a burst leave the computation to the settling rounds.
    assert computed["settling"]["count"] >= 1 and computed["extra_join"]["count"] >= 1
    assert computed["joins"]["count"] <= 5, computed
    for phase in ("after_joins", "after_extra_join"):
        assert result[phase]["server_us_per_heartbeat"] > 0
    assert any(line.startswith("the extra join moved") for line in lines)
