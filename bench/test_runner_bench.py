"""Smoke test of ``partstream bench runner`` on a small load: it runs, every record is
handled once in per-key order at each concurrency, and concurrency pays off clearly even at
this size (the full figure, 20,000 records, is in bench/README.md)."""

from __future__ import annotations

import pytest

from partitions.bench.runner import RunnerBenchOptions, run_runner_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_runner_bench_reports_order_kept_and_a_speedup(server_url: str) -> None:
    lines: list[str] = []
    opts = RunnerBenchOptions(
        records=600, keys=60, handler_ms=5, concurrency=(1, 16), url=server_url
    )
    result = run_runner_bench(opts, say=lines.append)
    assert [r["handled"] for r in result["runs"]] == [600, 600]
    assert result["per_key_order_kept"] and result["every_record_once"]
    assert result["speedup"] > 3  # 16 lanes of 5 ms waits vs one: far above this bar
    assert any(line.startswith("speed-up, concurrency 16 vs 1") for line in lines)
    assert all(r["server_us_per_record"] > 0 for r in result["runs"])
