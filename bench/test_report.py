"""bench/README.md's table names the commit of every row and says when rows mix commits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report


def _e2e(commit: str | None) -> dict[str, Any]:
    lat = {"records_per_s": 5000.0, "latency_ms": {"p50": 0.5, "p99": 1.5, "p999": 3.0}}
    env = {
        "server": {"flavor": "valkey", "version": "9.1.2", "url": "embedded (private)"},
        "cpu_count": 2, "load_avg_1m": 0.5, "platform": "Linux", "python": "3.11.7",
        "packages": {"redis": "8.1.0", "hiredis": "3.5.0"}, "redis_benchmark": None,
        "git_commit": commit, "time_utc": "2026-12-01T00:00:00Z",
    }  # fmt: skip
    return {
        "mode": "e2e", "command": "partstream bench e2e", "config": {"repeat": 3}, "env": env,
        "runs": [{"name": "partstream", **lat}, {"name": "raw", **lat}],
        "ratios": {"p99 latency partstream/raw": 1.0}, "targets": [], "notes": [], "extra": {},
    }  # fmt: skip


def _table(tmp_path: Path, *commits: str | None) -> str:
    files = []
    for i, c in enumerate(commits):
        f = tmp_path / f"e2e-{i}.json"
        f.write_text(json.dumps(_e2e(c)))
        files.append(f)
    return report.table(files)


def test_one_commit_is_named_once_and_on_every_row(tmp_path: Path) -> None:
    text = _table(tmp_path, "abc1234", "abc1234")
    assert text.startswith("Every row below comes from commit abc1234.")
    assert text.count("| abc1234 |") == 2


def test_rows_of_several_commits_or_a_dirty_tree_are_called_out(tmp_path: Path) -> None:
    text = _table(tmp_path, "abc1234", "abc1234+dirty", None)
    assert text.startswith("The rows below come from 3 commits: ?, abc1234, abc1234+dirty.")
