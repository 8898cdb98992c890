"""GroupSettings validation and (de)serialisation (no server)."""

from __future__ import annotations

import tomllib

import pytest

from coordinator.assignors import ASSIGNORS
from partitions._base.errors import ConfigError
from partitions._base.replies import settings_from_reply
from partitions._base.settings import ASSIGNOR_NAMES, DEFAULT_ASSIGNOR, GroupSettings


def test_defaults_are_kafka_like() -> None:
    s = GroupSettings()
    assert (s.assignor, s.session_timeout_ms, s.heartbeat_interval_ms) == ("uniform", 30000, 3000)
    assert (s.max_deliveries, s.reclaim_idle_ms) == (5, 60000)


def test_short_timeouts_for_tests_are_allowed() -> None:
    GroupSettings(session_timeout_ms=300, heartbeat_interval_ms=90)


def test_heartbeat_must_be_below_a_third_of_the_session() -> None:
    with pytest.raises(ConfigError, match="below a third of the session timeout"):
        GroupSettings(session_timeout_ms=900, heartbeat_interval_ms=300)


@pytest.mark.parametrize(
    "field", ["session_timeout_ms", "heartbeat_interval_ms", "max_deliveries", "reclaim_idle_ms"]
)
@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True])
def test_positive_ints(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        GroupSettings(**{field: value})  # type: ignore[arg-type]


def test_unknown_assignor() -> None:
    with pytest.raises(ConfigError, match=r"unknown assignor 'sticky'.*range, roundrobin, uniform"):
        GroupSettings(assignor="sticky")


def test_from_toml_table_rejects_unknown_keys() -> None:
    doc = tomllib.loads(
        "[groups.billing]\nassignor = 'range'\nsession_timeout_ms = 10000\n"
        "heartbeat_interval_ms = 1000\n"
    )
    s = GroupSettings.from_dict(doc["groups"]["billing"])
    assert s.assignor == "range" and s.session_timeout_ms == 10000
    with pytest.raises(ConfigError, match=r"unknown group setting.*session_timeout\b"):
        GroupSettings.from_dict({"session_timeout": 5})


def test_fields_round_trip_through_a_redis_hash_reply() -> None:
    s = GroupSettings(assignor="roundrobin", session_timeout_ms=1000, heartbeat_interval_ms=200)
    flat = s.to_fields()
    raw = {flat[i].encode(): flat[i + 1].encode() for i in range(0, len(flat), 2)}
    raw[b"from_a_newer_version"] = b"x"
    assert settings_from_reply(raw) == s


def test_the_assignor_names_are_the_registered_assignors() -> None:
    assert set(ASSIGNOR_NAMES) == set(ASSIGNORS)
    assert DEFAULT_ASSIGNOR in ASSIGNORS


def test_with_changes_validates_again() -> None:
    s = GroupSettings()
    assert s.with_changes(max_deliveries=9).max_deliveries == 9
    with pytest.raises(ConfigError):
        s.with_changes(heartbeat_interval_ms=20000)
    with pytest.raises(ConfigError, match="unknown group setting"):
        s.with_changes(nope=1)
