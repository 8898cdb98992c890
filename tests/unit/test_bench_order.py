"""The benchmark's side order: rotated from round to round, so no pair of sides is always
as far apart (the paired ratios against redis-benchmark) and no side always runs first."""

from __future__ import annotations

from partitions.bench.harness import rotated


def test_three_rounds_of_six_sides_start_at_spread_places() -> None:
    sides = ["ps", "py", "aio", "resp", "many", "rb"]
    orders = [rotated(sides, r, 3) for r in range(3)]
    assert [o[0] for o in orders] == ["ps", "aio", "many"]
    assert all(sorted(o) == sorted(sides) for o in orders)  # every side once a round
    gaps = [abs(o.index("ps") - o.index("rb")) for o in orders]
    assert gaps == [5, 1, 1]  # reversing every other round gave 5, 5, 5


def test_one_round_keeps_the_listed_order_and_edge_cases() -> None:
    assert rotated(["a", "b"], 0, 1) == ["a", "b"]
    assert rotated([], 2, 3) == []
