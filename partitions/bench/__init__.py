"""The load harness behind ``partstream bench``: partstream beside raw baselines, same run.

Every figure it prints is a ratio against a baseline measured in the same invocation, on
the same server, with the same records, so it holds on a shared, noisy machine:

* ``produce``   :mod:`partitions.bench.produce`   producer vs redis-py XADD loop, redis-benchmark
* ``consume``   :mod:`partitions.bench.consume`   consumer vs redis-py XREADGROUP + XACK loop
* ``e2e``       :mod:`partitions.bench.e2e`       fixed-rate latency vs raw XADD -> XREADGROUP
* ``rebalance`` :mod:`partitions.bench.rebalance` join / leave / kill -9 reconcile time, pauses

``coordinator`` (:mod:`partitions.bench.assignors`) needs no server and has no baseline: it
times the assignor alone, on a large group, in seconds.
"""

from __future__ import annotations

from partitions.bench.harness import run_bench
from partitions.bench.options import BenchOptions
from partitions.bench.output import BenchResult

__all__ = ["BenchOptions", "BenchResult", "run_bench"]
