"""``partstream bench produce --acks all`` in a tiny configuration: the run starts its own
primary with a local replica, measures acks="all" beside acks=1 in the same rounds, and
reports their ratio, both latencies and the 0.7x target. The figures are not judged here."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from partitions.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_produce_acks_all_beside_acks_1() -> None:
    args = ["bench", "produce", "--acks", "all", "-n", "3000", "--interval", "0.2"]
    result = CliRunner().invoke(main, [*args, "--no-redis-benchmark", "--format", "json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads(result.stdout)
    names = {r["name"] for r in data["runs"]}
    assert {"partstream", "partstream-acks-all", "redis-py"} <= names
    assert data["env"]["server"]["replicas"] == 1
    assert data["ratios"]["partstream-acks-all/partstream"] > 0
    target = next(t for t in data["targets"] if t["name"] == "produce acks=all / acks=1")
    assert target["goal"] == 0.7
    assert any("acks='all'" in n and "p50/p99/p99.9" in n for n in data["notes"])
    assert "--acks all" in data["command"]
