"""Optional peers, run only when their client library is installed: never needed by tests.

* NATS JetStream through ``nats-py`` at ``nats://127.0.0.1:4222`` (``PARTSTREAM_BENCH_NATS``);
* FastStream's Redis streams publisher.

Each publishes the same keyed records (same count and value size) as fast as its client
allows, and the ratio partstream/peer is reported beside the run's own baselines.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from partitions.bench.harness import Bench
    from partitions.bench.output import BenchResult

PEERS = {"nats": "nats", "faststream": "faststream"}


def installed(peer: str) -> bool:
    return importlib.util.find_spec(PEERS[peer]) is not None


def run_peers(b: Bench, result: BenchResult) -> None:
    """Note which peers are missing; run the installed ones."""
    for peer in PEERS:
        if not installed(peer):
            result.notes.append(f"peer {peer}: client library not installed, skipped")
            continue
        result.notes.append(f"peer {peer}: installed, but its runner is not written yet")
