"""Durability settings (acks, min_insync_replicas, fsync): parsing, cross-field checks, the
WAIT/WAITAOF commands they send and how their replies are judged, and the TOML / CLI shapes
that carry them. No server."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.exceptions as rex

from partitions._admin.apply import parse
from partitions._base.durability import Durability, parse_acks
from partitions._base.errors import ConfigError, NotEnoughReplicasError, ServerError
from partitions._base.replies import settings_from_reply
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._producer.delivery import Verdict, classify


@pytest.mark.parametrize(("raw", "acks"), [(1, 1), ("1", 1), ("all", "all"), (-1, "all")])
def test_acks_spellings(raw: object, acks: object) -> None:
    assert parse_acks(raw) == acks


@pytest.mark.parametrize(
    "kw",
    [
        {"acks": 2},
        {"acks": "one"},
        {"acks": True},
        {"acks": "all", "min_insync_replicas": 0},
        {"acks": "all", "min_insync_replicas": 1.5},
        {"fsync": "always"},
        {"fsync": "replicas"},  # waits for replicas: needs acks="all"
    ],
)
def test_bad_durability_is_a_config_error(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ProducerConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GroupSettings(**kw)  # type: ignore[arg-type]


def test_commands_per_setting() -> None:
    assert Durability().commands(100) == []
    assert not Durability().waits
    assert Durability("all", 2).commands(100) == [("WAIT", 2, 100)]
    assert Durability("all", 1, "local").commands(100) == [
        ("WAIT", 1, 100),
        ("WAITAOF", 1, 0, 100),
    ]
    assert Durability(1, 1, "local").commands(50) == [("WAITAOF", 1, 0, 50)]
    assert Durability("all", 2, "replicas").commands(100)[0] == ("WAITAOF", 1, 2, 100)


def test_replies_are_judged() -> None:
    d = Durability("all", 2)
    d.check([2], "x")
    d.check([3], "x")
    with pytest.raises(NotEnoughReplicasError, match="only 1 of the 2"):
        d.check([1], "x")
    local = Durability("all", 1, "local")
    local.check([1, [1, 0]], "x")
    with pytest.raises(NotEnoughReplicasError):
        local.check([1, [0, 0]], "x")
    # A server without WAITAOF (Redis 7.0): only WAIT decides.
    local.check([1, rex.ResponseError("unknown command 'WAITAOF'")], "x")
    with pytest.raises(NotEnoughReplicasError):
        local.check([0, rex.ResponseError("unknown command 'WAITAOF'")], "x")
    # appendonly off: a configuration problem, not worth retrying.
    with pytest.raises(ServerError):
        local.check([1, rex.ResponseError("ERR WAITAOF cannot be used ...")], "x")
    replicas = Durability("all", 1, "replicas")
    replicas.check([[1, 1], 1], "x")
    with pytest.raises(NotEnoughReplicasError):
        replicas.check([[1, 0], 1], "x")
    replicas.check([rex.ResponseError("unknown command 'WAITAOF'"), 1], "x")


def test_unconfirmed_batches_are_retried_not_failed() -> None:
    assert classify(NotEnoughReplicasError("too few")) is Verdict.BACKOFF
    assert NotEnoughReplicasError.retriable


def test_group_settings_round_trip_through_the_stored_hash() -> None:
    s = GroupSettings(acks="all", min_insync_replicas=2, fsync="local")
    raw = dict(zip(s.to_fields()[::2], s.to_fields()[1::2], strict=True))
    assert raw["acks"] == "all"
    back = settings_from_reply({k.encode(): v.encode() for k, v in raw.items()})
    assert back == s and back.durability == Durability("all", 2, "local")
    assert settings_from_reply({b"acks": b"1"}).acks == 1
    assert GroupSettings().with_changes(acks="all").acks == "all"


def test_producer_and_client_tables_in_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARTSTREAM_URL", raising=False)
    monkeypatch.delenv("PARTSTREAM_NAMESPACE", raising=False)
    path = tmp_path / "ha.toml"
    path.write_text(
        '[producer]\nacks = "all"\nmin_insync_replicas = 2\nfsync = "local"\n'
        '[client]\nurl = "redis+sentinel://s1:26379,s2:26379/orders"\nnamespace = "app"\n'
        "[topics.t]\npartitions = 2\n"
    )
    cfg = ProducerConfig.from_toml(path)
    assert (cfg.acks, cfg.min_insync_replicas, cfg.fsync) == ("all", 2, "local")
    assert ProducerConfig.from_toml(path, acks="1").acks == 1  # a flag wins
    client = ClientConfig.from_toml(path)
    assert client.url == "redis+sentinel://s1:26379,s2:26379/orders"
    assert client.namespace == "app"
    monkeypatch.setenv("PARTSTREAM_URL", "redis://env:6379")  # the environment beats the file
    assert ClientConfig.from_toml(path).url == "redis://env:6379"
    assert ClientConfig.from_toml(path, url="redis://flag:1").url == "redis://flag:1"
    declared = parse({"producer": {"acks": "all"}, "client": {"url": "redis://h:1"}})
    assert declared.producer is not None and declared.producer.acks == "all"
    assert declared.client is not None and declared.client.url == "redis://h:1"


@pytest.mark.parametrize(
    "data",
    [
        {"producer": {"akcs": "all"}},
        {"producer": {"acks": "some"}},
        {"client": {"url": "redis+sentinel://s1:26379"}},  # no master name
        {"client": {"data_dir": "/tmp"}},
        {"client": "redis://h"},
    ],
)
def test_bad_tables_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse(data)
