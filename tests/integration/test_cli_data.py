"""The CLI over the data plane, through click's CliRunner (same process, real server)."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from partitions._client.config import ClientConfig
from partitions.cli import main


def run(cfg: ClientConfig, *args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
    assert cfg.url is not None
    result = CliRunner().invoke(
        main, ["--url", cfg.url, "--namespace", cfg.namespace, *args], input=input
    )
    return result.exit_code, result.stdout, result.stderr


def test_orders_by_tenant_end_to_end(client_config: ClientConfig) -> None:
    """The issue's check: 100,000 JSON lines, 50 tenants, 8 partitions."""
    code, out, _ = run(client_config, "topic", "create", "orders", "-p", "8")
    assert code == 0, out
    lines = "".join(
        orjson.dumps({"tenant": f"tenant-{i % 50}", "seq": i}).decode() + "\n"
        for i in range(100_000)
    )
    code, out, err = run(
        client_config, "produce", "orders", "--key-field", "tenant", "-q", input=lines
    )
    assert code == 0, err
    assert "100000 records produced" in out
    code, out, _ = run(client_config, "topic", "describe", "orders", "--format", "json")
    desc = orjson.loads(out)
    assert desc["name"] == "orders"
    assert sum(p["length"] for p in desc["partitions"]) == 100_000
    assert {"partition", "length", "first_id", "last_id"} <= set(desc["partitions"][0])

    code, out, _ = run(client_config, "replay", "orders", "--format", "json")
    partitions_of: dict[str, set[int]] = {}
    seqs: dict[str, list[int]] = {}
    for line in out.splitlines():
        rec = orjson.loads(line)
        assert {"topic", "partition", "id", "key", "value", "headers", "timestamp"} <= set(rec)
        partitions_of.setdefault(rec["key"], set()).add(rec["partition"])
        seqs.setdefault(rec["key"], []).append(rec["value"]["seq"])
    assert len(partitions_of) == 50
    assert all(len(p) == 1 for p in partitions_of.values())  # each tenant in exactly one partition
    for tenant, got in seqs.items():
        assert got == sorted(got), tenant  # in the order sent
        assert len(got) == 2000


def test_produce_prints_partition_and_id_and_headers(client_config: ClientConfig) -> None:
    run(client_config, "topic", "create", "t", "-p", "2")
    code, out, _ = run(
        client_config, "produce", "t", "-k", "a", "-H", "x=1", input="hello\nworld\n"
    )
    assert code == 0
    assert out.count("Produced to partition ") == 2 and " at id " in out
    code, out, _ = run(client_config, "replay", "t", "--format", "json", "-n", "1")
    rec = orjson.loads(out)
    assert rec["value"] == "hello" and rec["key"] == "a" and rec["headers"] == {"x": "1"}
    code, out, _ = run(client_config, "produce", "t", "--format", "json", input="x\n")
    assert set(orjson.loads(out.splitlines()[0])) == {"topic", "partition", "id"}


def test_errors_are_one_line_and_nonzero(client_config: ClientConfig) -> None:
    code, _, err = run(client_config, "topic", "describe", "missing")
    assert code == 1 and err.startswith("error: UnknownTopicError") and err.count("\n") == 1
    code, _, err = run(client_config, "topic", "create", "bad{name}", "-p", "2")
    assert code == 1 and "InvalidNameError" in err
    run(client_config, "topic", "create", "j", "-p", "2")
    code, _, err = run(
        client_config, "produce", "j", "--key-field", "id", input='{"id": 1}\nnot json\n'
    )
    assert code == 1 and "line 2" in err
    bad_url = CliRunner().invoke(main, ["--url", "http://x", "topic", "list"])
    assert bad_url.exit_code == 1 and "unsupported URL scheme" in bad_url.stderr


def test_apply_dry_run_and_refusal(client_config: ClientConfig, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[topics.a]\npartitions = 4\n[groups.g]\nmax_deliveries = 3\n")
    code, out, _ = run(client_config, "apply", str(cfg), "--dry-run")
    assert code == 0 and "create    topic a" in out and "(dry run)" in out
    code, out, _ = run(client_config, "topic", "list", "--format", "json")
    assert orjson.loads(out) == []  # dry run wrote nothing
    code, out, _ = run(client_config, "apply", str(cfg))
    assert code == 0
    code, out, _ = run(client_config, "apply", str(cfg))
    assert "unchanged topic a" in out
    cfg.write_text(
        "[topics.a]\npartitions = 6\nretention_ms = 1000\n[groups.g]\nmax_deliveries = 4\n"
    )
    code, out, _ = run(client_config, "apply", str(cfg))
    assert code == 0 and "alter     topic a" in out and "alter     group g" in out
    cfg.write_text("[topics.a]\npartitions = 2\n")
    code, _, err = run(client_config, "apply", str(cfg))
    assert code == 1 and "refusing destructive" in err
    cfg.write_text('[topics.a]\npartitions = 6\nretention_ms = 1000\nrouting = "jump"\n')
    code, _, err = run(client_config, "apply", str(cfg))
    assert code == 1 and "routing" in err
    code, out, _ = run(client_config, "apply", str(cfg), "--force")
    assert code == 0
    code, out, _ = run(client_config, "topic", "describe", "a", "--format", "json")
    assert orjson.loads(out)["routing"] == "jump"
    cfg.write_text("[topics.a]\npartitions = 6\nbogus = 1\n")
    code, _, err = run(client_config, "apply", str(cfg))
    assert code == 1 and "unknown setting" in err
