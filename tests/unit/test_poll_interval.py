"""max_poll_interval_ms without a server: the poll timer on a fake clock, the setting's checks,
TOML and the CLI flag (refused before connecting)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.heartbeat import PollTimer
from partitions._admin import apply
from partitions._base.errors import ConfigError, MembershipError, PollIntervalExceededError
from partitions._client.config import ConsumerConfig
from partitions.cli import main


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_interval_runs_only_between_requests() -> None:
    clock = FakeClock()
    t = PollTimer(1000, clock=clock)
    assert t.time_to_expiry() == pytest.approx(1.0)
    t.begin()
    clock.now += 60  # a long poll(timeout) on a quiet topic
    assert not t.expired() and t.time_to_expiry() == float("inf") and t.since_poll() == 0
    t.end()  # counts from the end of the request
    clock.now += 0.99
    assert not t.expired() and t.since_poll() == pytest.approx(0.99)
    clock.now += 0.01
    assert t.expired() and t.time_to_expiry() == 0


def test_overlapping_requests_and_reset() -> None:
    clock = FakeClock()
    t = PollTimer(1000, clock=clock)
    t.begin()
    t.begin()  # e.g. commit() from a rebalance callback inside poll()
    t.end()
    clock.now += 5
    assert not t.expired()  # the outer request is still in progress
    t.end()
    t.end()  # an unmatched end never makes the count negative
    assert t.active == 0
    clock.now += 2
    assert t.expired()
    t.reset()
    assert not t.expired() and t.time_to_expiry() == pytest.approx(1.0)


def test_error_is_a_retriable_membership_error() -> None:
    err = PollIntervalExceededError("left", member_id="m", max_poll_interval_ms=3000)
    assert isinstance(err, MembershipError) and err.retriable
    assert (err.member_id, err.max_poll_interval_ms, err.partitions) == ("m", 3000, frozenset())


def test_setting_defaults_to_kafkas_and_is_checked() -> None:
    assert ConsumerConfig().max_poll_interval_ms == 300_000
    for bad in (0, 99, -5, True, "300000", 1.5):
        with pytest.raises(ConfigError, match="max_poll_interval_ms"):
            ConsumerConfig(max_poll_interval_ms=bad)  # type: ignore[arg-type]
    assert ConsumerConfig(max_poll_interval_ms=100).max_poll_interval_ms == 100


def test_consumer_table_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[topics.a]\npartitions = 2\n\n[consumer]\nmax_poll_interval_ms = 60000\n")
    assert ConsumerConfig.from_toml(path).max_poll_interval_ms == 60_000
    # flags (not None) win over the file
    assert ConsumerConfig.from_toml(path, max_poll_interval_ms=None).max_poll_interval_ms == 60_000
    assert ConsumerConfig.from_toml(path, max_poll_interval_ms=5000).max_poll_interval_ms == 5000
    # `partstream apply` validates the table and accepts the file
    declared = apply.load(path)
    assert declared.consumer == ConsumerConfig(max_poll_interval_ms=60_000)
    assert set(declared.topics) == {"a"}
    path.write_text("[consumer]\nmax_poll_interval = 60000\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*max_poll_interval"):
        ConsumerConfig.from_toml(path)
    with pytest.raises(ConfigError, match=r"\[consumer\]"):
        apply.load(path)
    path.write_text("[consumer]\nmax_poll_interval_ms = 10\n")
    with pytest.raises(ConfigError, match="at least 100"):
        ConsumerConfig.from_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        ConsumerConfig.from_toml(tmp_path / "missing.toml")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert ConsumerConfig.from_toml(empty) == ConsumerConfig()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}"


def test_cli_flag_and_file_are_checked_before_connecting(tmp_path: Path) -> None:
    run = CliRunner().invoke
    args = ["--url", _dead_url(), "consume", "t", "-g", "g"]
    res = run(main, [*args, "--max-poll-interval-ms", "5"])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ConfigError") and "max_poll_interval_ms" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[consumer]\nmax_poll_interval_ms = 'soon'\n")
    res = run(main, [*args, "--config", str(bad)])
    assert res.exit_code == 1 and "max_poll_interval_ms" in res.stderr
    res = run(main, ["consume", "--help"])
    assert "--max-poll-interval-ms" in res.output and "--config" in res.output
