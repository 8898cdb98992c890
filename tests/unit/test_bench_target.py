"""A bench target's verdict: by its ratio, or missed whatever the ratio when it is void."""

from __future__ import annotations

from partitions.bench.stats import Target


def test_a_void_target_is_missed_whatever_its_ratio() -> None:
    kept = Target("e2e p99", 0.8, 1.3, higher_is_better=False)
    assert kept.met and kept.describe().endswith("met)")
    behind = Target("e2e p99", 0.8, 1.3, higher_is_better=False, void="could not keep the rate")
    assert not behind.met
    assert behind.describe().endswith("MISSED, could not keep the rate)")
    assert behind.to_dict()["void"] == "could not keep the rate" and "void" not in kept.to_dict()
