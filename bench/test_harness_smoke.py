"""Every ``partstream bench`` mode in a tiny configuration, through the CLI, so the harness
cannot rot: the JSON must carry the runs, rates, latency percentiles, ratios, targets and
the environment. The figures themselves are not judged here (they are noise at this size).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LATENCY_KEYS = {"samples", "avg", "max", "p50", "p95", "p99", "p999"}


@pytest.fixture(scope="module")
def url(server_url: str) -> str:
    """The suite's server (bench/conftest.py): $PARTSTREAM_TEST_URL or a private embedded one."""
    return server_url


def bench(url: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["bench", *args, "--url", url, "--format", "json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["mode"] == args[0]
    assert data["command"].startswith(f"partstream bench {args[0]}")
    env = data["env"]
    assert env["server"]["version"] and env["cpu_count"] >= 1 and env["python"]
    assert "partstream" in env["packages"] and "redis" in env["packages"]
    for t in data["targets"]:
        assert set(t) >= {"name", "value", "goal", "met"} and isinstance(t["met"], bool)
    assert data["targets_met"] == all(t["met"] for t in data["targets"])
    return data


def runs(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = [r for r in data["runs"] if r["name"] == name]
    assert found, f"no {name} run in {[r['name'] for r in data['runs']]}"
    for r in found:
        assert r["records_per_s"] > 0 and r["mb_per_s"] > 0
        assert set(r["latency_ms"]) == LATENCY_KEYS
    return found


def test_produce(url: str, tmp_path: Path) -> None:
    out = tmp_path / "produce.json"
    data = bench(url, "produce", "-n", "2000", "--interval", "0.2", "--out", str(out))
    ps, raw = runs(data, "partstream")[0], runs(data, "redis-py")[0]
    assert ps["records"] == raw["records"] == 2000
    assert ps["latency_ms"]["samples"] == 20  # one in 100 records
    expected = ps["records_per_s"] / raw["records_per_s"]
    assert data["ratios"]["partstream/redis-py"] == pytest.approx(expected, rel=1e-3)
    # The asyncio producer runs beside the threaded one, with its own target.
    assert runs(data, "partstream-asyncio")[0]["records"] == 2000
    targets = [t["name"] for t in data["targets"]]
    assert "produce partstream/redis-py" in targets
    assert "produce partstream-asyncio/partstream" in targets
    # The hand-packed RESP loop; every side with the server's CPU per record (INFO cpu).
    assert runs(data, "resp-pipeline")[0]["records"] == 2000
    assert runs(data, "partstream-send-many")[0]["records"] == 2000
    assert all(r["server_us_per_record"] > 0 for r in data["runs"])
    if shutil.which("redis-benchmark"):
        assert runs(data, "redis-benchmark")[0]["records"] == 2000
        assert "produce server us/record partstream/redis-benchmark" in targets
        assert "produce records/s partstream/redis-benchmark" in targets
        assert data["ratios"]["server us/record resp-pipeline/redis-benchmark"] > 0
    saved = json.loads(out.read_text())
    assert saved["runs"] == data["runs"] and saved["env"] == data["env"]


def test_produce_on_a_cluster_beside_single_node(url: str) -> None:
    data = bench(url, "produce", "-n", "2000", "-p", "8", "--cluster", "3", "--no-redis-benchmark")
    single, clustered = runs(data, "partstream")[0], runs(data, "partstream-cluster-3")[0]
    assert single["records"] == clustered["records"] == 2000
    expected = clustered["records_per_s"] / single["records_per_s"]
    assert data["ratios"]["partstream-cluster-3/partstream"] == pytest.approx(expected, rel=1e-2)
    # Each primary's share: the records its partitions hold add up to the run's, and the
    # 8 partitions sit 3/3/2 on the 3 primaries.
    per_node = clustered["extra"]["per_node"]
    # (and the producer's one warm-up record)
    assert len(per_node) == 3 and sum(n["records"] for n in per_node) == 2001
    assert sorted(n["partitions"] for n in per_node) == [2, 3, 3]
    assert all(n["cpu_s"] >= 0 for n in per_node)
    (row,) = data["extra"]["cluster"]
    assert row["masters"] == 3 and row["per_node"] == per_node
    assert any("cluster of 3 primaries" in n and "per primary" in n for n in data["notes"])


def test_cluster_sizes_are_parsed_and_checked() -> None:
    from partitions._base.errors import ConfigError
    from partitions.bench.options import BenchOptions

    assert BenchOptions(cluster="1,2,3").cluster == (1, 2, 3)  # type: ignore[arg-type]
    assert BenchOptions(cluster="").cluster == ()  # type: ignore[arg-type]
    for bad in ("0", "9", "a", "2,2"):
        with pytest.raises(ConfigError, match="cluster"):
            BenchOptions(cluster=bad)  # type: ignore[arg-type]


def test_consume_csv(url: str) -> None:
    data = bench(url, "consume", "-n", "2000", "-p", "4", "--consumers", "2")
    for name in ("partstream", "redis-py"):
        assert sum(r["records"] for r in runs(data, name)) >= 2000
    assert data["config"]["consumers"] == 2
    assert "consume partstream/redis-py" in [t["name"] for t in data["targets"]]
    result = CliRunner().invoke(main, ["bench", "consume", "-n", "500", "-p", "2", "--url", url,
                                       "--format", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["kind"] for r in rows} == {"run", "ratio", "target"}
    names = [r["name"] for r in rows if r["kind"] == "run"]
    assert names == ["partstream", "redis-py", "partstream-asyncio"]


def test_e2e(url: str) -> None:
    data = bench(url, "e2e", "--rate", "1000", "--duration", "1", "-p", "4")
    for name in ("partstream", "raw"):
        run = runs(data, name)[0]
        assert run["records"] == 1000 and run["extra"]["lost"] == 0
        assert 500 < run["extra"]["kept_rate"] < 2000  # ~1,000 records/s delivered
        assert run["latency_ms"]["samples"] == 1000
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
        assert run["server_us_per_record"] > 0
    assert set(data["ratios"]) == {
        *(f"{p} latency partstream/raw" for p in ("p50", "p99", "p999")),
        "server us/record partstream/raw",
    }


def test_rebalance(url: str) -> None:
    data = bench(url, "rebalance", "--rate", "500", "--duration", "0.5", "-p", "6")
    events = data["extra"]["events"]
    assert [e["event"] for e in events] == ["join", "leave", "kill -9"]
    for e in events:
        assert e["reconcile_ms"] > 0
        assert e["moved_partitions"] + e["unmoved_partitions"] == 6
        # the slowest unmoved record's time lies in the window judged (the event to 0.5 s
        # past its reconcile)
        assert 0.0 <= e["unmoved_max_at_ms"] <= e["reconcile_ms"] + 500.0
    # A kill -9 is only noticed when the session expires.
    assert events[2]["reconcile_ms"] >= data["extra"]["settings"]["session_timeout_ms"] * 0.5
    assert len(data["targets"]) == 3


def test_text_output(url: str) -> None:
    result = CliRunner().invoke(
        main, ["bench", "produce", "-n", "1000", "--no-redis-benchmark", "--url", url]
    )
    assert result.exit_code == 0, result.output
    assert "partstream: 1000 records in" in result.stdout
    assert "99.9th" in result.stdout and "ratio partstream/redis-py:" in result.stdout
    assert "target produce partstream/redis-py" in result.stdout


def test_peers(url: str) -> None:
    """``--peers`` runs each installed peer in the rounds; skips when none is installed."""
    from bench import peers

    found = [p for p in peers.PEERS if peers.installed(p)]
    if not found:
        pytest.skip("no peer client library installed (pip install 'partstream[peers]')")
    for mode in ("produce", "consume"):
        data = bench(url, mode, "-n", "500", "-p", "4", "--peers", "--no-redis-benchmark")
        notes = " ".join(data["notes"])
        for peer in peers.PEERS:
            if peer not in found:
                assert f"peer {peer}: " in notes and "not installed" in notes
            elif peer == peers.NATS and "no JetStream" in notes:
                continue  # installed, but no server here
            else:
                assert runs(data, peer)[0]["records"] >= 500
                assert data["ratios"][f"partstream/{peer}"] > 0
        if peers.FASTSTREAM in found:
            assert f"{mode} partstream/faststream-redis" in [t["name"] for t in data["targets"]]


def test_peers_missing(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the client libraries, ``--peers`` says so and runs the rest."""
    from bench import peers

    monkeypatch.setattr(peers, "installed", lambda peer: False)
    data = bench(url, "produce", "-n", "500", "-p", "2", "--peers", "--no-redis-benchmark")
    assert [r["name"] for r in data["runs"]] == [
        "partstream", "redis-py", "partstream-asyncio", "resp-pipeline", "partstream-send-many",
    ]  # fmt: skip
    for peer in peers.PEERS:
        assert any(n.startswith(f"peer {peer}: ") and "not installed" in n for n in data["notes"])
