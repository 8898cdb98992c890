"""Server URLs: every accepted form parses, every malformed one is a ConfigError, no
password ever shows (Sentinel and multi-seed cluster URLs included)."""

from __future__ import annotations

import pytest

from partitions._base.errors import ConfigError
from partitions._client.config import ClientConfig
from partitions._client.urls import parse_cluster, parse_sentinel, redact_url, validate_url


def test_sentinel_url_with_several_sentinels_credentials_and_db() -> None:
    t = parse_sentinel("redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/orders?db=3")
    assert t.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert t.master == "orders"
    assert t.db == 3
    assert (t.username, t.password) == ("app", "s@cret")
    assert not t.tls
    assert t.sentinel_password is None


def test_rediss_sentinel_and_sentinel_password() -> None:
    t = parse_sentinel("rediss+sentinel://h:26379/m?sentinel_password=pw&sentinel_username=u")
    assert t.tls
    assert (t.sentinel_username, t.sentinel_password) == ("u", "pw")


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",  # no master name
        "redis+sentinel://h:26379/",
        "redis+sentinel:///m",  # no sentinel
        "redis+sentinel://h:0/m",
        "redis+sentinel://h:70000/m",
        "redis+sentinel://h:abc/m",
        "redis+sentinel://h1:1,,h2:2/m",  # empty host in the list
        "redis+sentinel://h:1/m?db=x",
        "redis+sentinel://h:1/m?dbb=1",  # unknown parameter
        "redis+sentinel://h:1/bad{name}",
        "redis+sentinel://[::1:1/m",
        "redis+cluster://h1:7000,h2:bad",
        "redis+cluster://h1:7000/2",  # a cluster has only db 0
        "redis+cluster://",
    ],
)
def test_bad_multi_host_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        validate_url(url)
    with pytest.raises(ConfigError):
        ClientConfig(url=url)


def test_cluster_url_with_several_seeds() -> None:
    seeds = parse_cluster("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001,h3")
    assert seeds.nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001), ("h3", 6379))
    assert (seeds.username, seeds.password) == ("u", "p")
    ClientConfig(url="rediss+cluster://h1:7000,h2:7001")


def test_redaction_of_multi_host_urls() -> None:
    url = "redis+sentinel://app:topsecret@s1:26379,s2:26380/m?sentinel_password=alsosecret"
    shown = redact_url(url)
    assert "topsecret" not in shown and "alsosecret" not in shown
    assert shown == "redis+sentinel://app:***@s1:26379,s2:26380/m?sentinel_password=***"
    assert "topsecret" not in repr(ClientConfig(url=url))
    with pytest.raises(ConfigError) as err:
        ClientConfig(url="redis+sentinel://app:topsecret@s1:bad/m")
    assert "topsecret" not in str(err.value)
    assert redact_url("redis://:pw@h:1") == "redis://:***@h:1"


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTSTREAM_URL", "redis+sentinel://s1:26379,s2:26379/orders")
    assert ClientConfig.from_env().url == "redis+sentinel://s1:26379,s2:26379/orders"
    monkeypatch.setenv("PARTSTREAM_URL", "redis+sentinel://s1:26379")
    with pytest.raises(ConfigError):
        ClientConfig.from_env()
